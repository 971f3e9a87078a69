// Declarations only; see lib/cpp/gloo/README.md.
#pragma once
namespace gloo {
class Context;
namespace transport {
class Device;
class UnboundBuffer;
} // namespace transport
} // namespace gloo
