// One parse for the library's environment switches (A/B knobs and overrides such as DISTATTN_FORWARD_KERNEL).
//
// Every switch the library reads goes through env_choice (a word from a fixed list; "0" / "1" for on/off switches) or
// env_int (a whole decimal number in a range). Unset or empty means the switch's default; anything else that is not
// one of the accepted values throws distattn::Error whose argument is the variable's name and whose message lists what
// is accepted and the value seen, so a misspelt knob is an Error instead of silently doing nothing.
//
// Callers read a switch once per process (a function-local static holding the parsed value), except the few that are
// read again at every construction or call (the ring's DISTATTN_RING_BWD_OWN / DISTATTN_RING_ALIBI_CUTOFF, agreed
// across ranks at construction; DISTATTN_RING_TRACE; DISTATTN_HOST_THREADS). Every switch is documented where it is
// read and in the tables of README.md / bench/README.md ("Kernel switches"); add no switch without a row there.
#pragma once

#include <cstdint>
#include <initializer_list>

namespace distattn {

// The index in `choices` of `value` (exact, case-sensitive match); `fallback` when value is null or empty. Anything
// else throws Error(argument = name): "expected a, b or c, got 'x'". `fallback` need not be an index of `choices` (-1
// for "unset", say). The text-level half of env_choice, for callers that already hold the text.
int parse_choice(const char* name, const char* value, std::initializer_list<const char*> choices, int fallback);

// parse_choice(name, std::getenv(name), choices, fallback). Example: env_choice("DISTATTN_RING_VEC", {"0", "1"}, 1)
// is 0 for "0", 1 for "1" or unset, and throws for "off".
int env_choice(const char* name, std::initializer_list<const char*> choices, int fallback);

// `value` as a whole decimal integer (an optional '-' then digits, nothing else: no spaces, no '+', no suffix) in
// [lo, hi]; `fallback` when value is null or empty (it need not lie in [lo, hi]). Anything else, an out-of-range or
// overflowing number included, throws Error(argument = name): "expected an integer in [lo, hi], got 'x'". The
// text-level half of env_int.
int64_t parse_int(const char* name, const char* value, int64_t lo, int64_t hi, int64_t fallback);

// parse_int(name, std::getenv(name), lo, hi, fallback).
int64_t env_int(const char* name, int64_t lo, int64_t hi, int64_t fallback);

}  // namespace distattn
