// distattn::Error and the argument-check macros every public call uses.
//
// Library code never exits the process. Every failure is a distattn::Error whose message names
//   - what failed and what was expected,
//   - the offending argument (when there is one),
//   - the rank of this process (when known),
//   - the place (file:line) that detected it.
// The library-specific check macros (CUDA, NCCL, cuBLAS, MPI) live in check_*.h so that including
// this header pulls in no third-party header.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace distattn {

class Error : public std::runtime_error {
 public:
  // `argument` may be empty when the failure is not tied to one argument (a CUDA launch failure, say).
  Error(const std::string& message, const std::string& argument, const char* file, int line);

  const std::string& message() const { return message_; }
  const std::string& argument() const { return argument_; }
  const std::string& where() const { return where_; }  // "file:line"
  int rank() const { return rank_; }                   // -1 when unknown

 private:
  std::string message_;
  std::string argument_;
  std::string where_;
  int rank_;
};

// The rank named in every Error thrown by this process. The communicator sets it; before that the
// launcher's environment (OMPI_COMM_WORLD_RANK, PMI_RANK, SLURM_PROCID) is consulted; -1 if none.
void set_error_rank(int rank);
int error_rank();

namespace detail {
// Builds a message from stream-able pieces: make_message("got ", x, ", expected ", y).
template <typename... Args>
std::string make_message(const Args&... args) {
  std::ostringstream os;
  (void)std::initializer_list<int>{((os << args), 0)...};
  return os.str();
}
}  // namespace detail

}  // namespace distattn

// Throws distattn::Error naming `arg` (a string literal or std::string) unless `cond` holds.
// The remaining arguments are streamed into the message.
#define DISTATTN_CHECK_ARG(cond, arg, ...)                                                               \
  do {                                                                                                   \
    if (!(cond)) {                                                                                       \
      throw ::distattn::Error(::distattn::detail::make_message(__VA_ARGS__), (arg), __FILE__, __LINE__); \
    }                                                                                                    \
  } while (0)

// Throws distattn::Error with no argument name: an internal invariant or an unsupported request.
#define DISTATTN_CHECK(cond, ...)                                                                     \
  do {                                                                                                \
    if (!(cond)) {                                                                                    \
      throw ::distattn::Error(::distattn::detail::make_message(__VA_ARGS__), "", __FILE__, __LINE__); \
    }                                                                                                 \
  } while (0)

#define DISTATTN_THROW(arg, ...) \
  throw ::distattn::Error(::distattn::detail::make_message(__VA_ARGS__), (arg), __FILE__, __LINE__)
