// Declarations only; see ffi/cpp/gloo/README.md. `ProcessGroupGloo::setTimeout` (inline in c10d's header, never
// called by our code) names this member.
#pragma once
#include <chrono>
namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
namespace transport {
class Device;
class UnboundBuffer;
} // namespace transport
} // namespace gloo
