// Declarations only; see ffi/cpp/gloo/README.md: the names c10d uses are all in context.h.
#pragma once
#include <gloo/context.h>
