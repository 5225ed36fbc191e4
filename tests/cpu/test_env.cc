// The environment switches' parse (distattn/core/env.h): env_choice / env_int through setenv, their text-level halves,
// and real switches whose parse runs on the host. The library's callers keep a switch's value in a function-local
// static, so only the first read per process shows a value: the helpers are tested directly, and a cached switch
// (the dilated ones) through a death test in threadsafe style, whose child re-executes this binary with a fresh
// process (nothing cached) and the variable set.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>

#include "distattn/comm/ce_window.h"
#include "distattn/core/env.h"
#include "distattn/core/error.h"
#include "distattn/dilated/dilated_attention.h"

namespace distattn {
namespace {

// A variable of this test only (no library switch reads it), set for one scope.
constexpr const char* kVar = "DISTATTN_TEST_ENV_SWITCH";

struct ScopedEnv {
  std::string name;
  ScopedEnv(const char* n, const char* value) : name(n) {
    if (value == nullptr) {
      unsetenv(n);
    } else {
      setenv(n, value, 1);
    }
  }
  ~ScopedEnv() { unsetenv(name.c_str()); }
};

// Runs f, which must throw Error naming `name` with every piece of `parts` in its message.
template <typename F>
void expect_error(F f, const char* name, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.argument(), name);
    for (const std::string& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST(EnvChoice, UnsetAndEmptyGiveTheFallback) {
  {
    ScopedEnv env(kVar, nullptr);
    EXPECT_EQ(env_choice(kVar, {"auto", "hopper", "mma"}, 0), 0);
    EXPECT_EQ(env_choice(kVar, {"auto", "hopper", "mma"}, -1), -1);  // a fallback outside the choices
    EXPECT_EQ(env_choice(kVar, {"0", "1"}, 1), 1);
  }
  ScopedEnv env(kVar, "");
  EXPECT_EQ(env_choice(kVar, {"auto", "hopper", "mma"}, 2), 2);
  EXPECT_EQ(env_choice(kVar, {"0", "1"}, 1), 1);
}

TEST(EnvChoice, EachChoiceGivesItsIndex) {
  const char* choices[] = {"auto", "hopper", "mma"};
  for (int i = 0; i < 3; ++i) {
    ScopedEnv env(kVar, choices[i]);
    EXPECT_EQ(env_choice(kVar, {"auto", "hopper", "mma"}, -1), i) << choices[i];
  }
  for (const char* v : {"0", "1"}) {
    ScopedEnv env(kVar, v);
    EXPECT_EQ(env_choice(kVar, {"0", "1"}, 7), v[0] - '0');
  }
}

TEST(EnvChoice, AnythingElseThrowsNamingTheVariable) {
  // Near misses: case, spaces, prefixes, numbers for words and words for numbers.
  for (const char* bad : {"x", "MMA", "mma ", " mma", "mm", "mmaa", "auto,mma", "0"}) {
    ScopedEnv env(kVar, bad);
    expect_error(
        [] {
          env_choice(kVar, {"auto", "hopper", "mma"}, 0);
        },
        kVar, {"expected auto, hopper or mma, got '" + std::string(bad) + "'"});
  }
  for (const char* bad : {"on", "off", "true", "2", "-1", "00", "01", "1 "}) {
    ScopedEnv env(kVar, bad);
    expect_error([] { env_choice(kVar, {"0", "1"}, 1); }, kVar, {"expected 0 or 1, got '" + std::string(bad) + "'"});
  }
  ScopedEnv env(kVar, "two");
  expect_error([] { env_choice(kVar, {"one"}, 0); }, kVar, {"expected one, got 'two'"});
}

TEST(EnvInt, UnsetAndEmptyGiveTheFallback) {
  {
    ScopedEnv env(kVar, nullptr);
    EXPECT_EQ(env_int(kVar, 0, 100, 42), 42);
    EXPECT_EQ(env_int(kVar, 0, 100, -5), -5);  // a fallback outside [lo, hi]
  }
  ScopedEnv env(kVar, "");
  EXPECT_EQ(env_int(kVar, 0, 100, 42), 42);
}

TEST(EnvInt, TakesIntegersAtTheBounds) {
  struct Case {
    const char* text;
    int64_t lo, hi, want;
  };
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  for (const Case& c : {Case{"-1", -1, 1 << 30, -1}, Case{"1073741824", -1, 1 << 30, 1 << 30}, Case{"0", 0, 0, 0},
                        Case{"-0", 0, 5, 0}, Case{"17", 0, 100, 17}, Case{"007", 0, 100, 7},
                        Case{"9223372036854775807", 0, kMax, kMax}, Case{"-9223372036854775808", kMin, 0, kMin}}) {
    ScopedEnv env(kVar, c.text);
    EXPECT_EQ(env_int(kVar, c.lo, c.hi, 12345), c.want) << c.text;
  }
}

TEST(EnvInt, AnythingElseThrowsNamingTheVariableTheRangeAndTheValue) {
  struct Case {
    const char* text;
    int64_t lo, hi;
  };
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  for (const Case& c :
       {Case{"-2", -1, 1 << 30}, Case{"1073741825", -1, 1 << 30}, Case{"12x", 0, 100}, Case{" 3", 0, 100},
        Case{"3 ", 0, 100}, Case{"-", 0, 100}, Case{"+3", 0, 100}, Case{"0x10", 0, 100}, Case{"1e3", 0, 10000},
        Case{"2.0", 0, 100}, Case{"eight", 0, 100}, Case{"--1", -5, 5}, Case{"101", 0, 100}}) {
    ScopedEnv env(kVar, c.text);
    expect_error([&] { env_int(kVar, c.lo, c.hi, 0); }, kVar,
                 {"expected an integer in [" + std::to_string(c.lo) + ", " + std::to_string(c.hi) + "], got '" +
                  std::string(c.text) + "'"});
  }
  // Past int64 on either side (no wrap-around into range), and the unbounded form of the message.
  for (const char* text : {"9223372036854775808", "99999999999999999999", "-1"}) {
    ScopedEnv env(kVar, text);
    expect_error([] { env_int(kVar, 0, kMax, 0); }, kVar,
                 {"expected an integer >= 0, got '" + std::string(text) + "'"});
  }
  ScopedEnv env(kVar, "-9223372036854775809");
  expect_error([] { env_int(kVar, std::numeric_limits<int64_t>::min(), 0, 0); }, kVar, {"-9223372036854775809"});
}

TEST(EnvParse, TextLevelHalvesMatchTheEnvironmentOnes) {
  EXPECT_EQ(parse_choice(kVar, nullptr, {"a", "b"}, 5), 5);
  EXPECT_EQ(parse_choice(kVar, "", {"a", "b"}, 5), 5);
  EXPECT_EQ(parse_choice(kVar, "b", {"a", "b"}, 5), 1);
  expect_error([] { parse_choice("SOME_NAME", "c", {"a", "b"}, 0); }, "SOME_NAME", {"expected a or b, got 'c'"});
  EXPECT_EQ(parse_int(kVar, nullptr, 1, 2, 9), 9);
  EXPECT_EQ(parse_int(kVar, "2", 1, 2, 9), 2);
  expect_error([] { parse_int("SOME_NAME", "3", 1, 2, 0); }, "SOME_NAME", {"expected an integer in [1, 2], got '3'"});
}

// A real switch read at every call: the ring's K|V exchange mode (comm/src/ce_window_decision.cc).
TEST(EnvSwitches, RingExchange) {
  {
    ScopedEnv env("DISTATTN_RING_EXCHANGE", nullptr);
    EXPECT_EQ(ce::exchange_mode_from_env(), ce::ExchangeMode::kCopyEngine);
  }
  {
    ScopedEnv env("DISTATTN_RING_EXCHANGE", "nccl");
    EXPECT_EQ(ce::exchange_mode_from_env(), ce::ExchangeMode::kNccl);
  }
  ScopedEnv env("DISTATTN_RING_EXCHANGE", "NCCL");
  expect_error([] { ce::exchange_mode_from_env(); }, "DISTATTN_RING_EXCHANGE", {"expected ce or nccl, got 'NCCL'"});
}

// Switches read once per process, formerly silent on a bad value: the dilated defaults, read by the DilatedAttention
// constructor (host engine, no GPU). Each case runs in a fresh process (threadsafe death test: the child re-executes
// this binary, so nothing is cached yet) with one variable set; the child exits 0 when the constructor threw an Error
// naming that variable with the accepted values and the value seen in its message, 1 otherwise.
void construct_dilated_with(const char* name, const char* value, const std::string& message) {
  setenv(name, value, 1);
  DilatedConfig config;
  config.patterns = {{8, 1}, {16, 2}};
  try {
    DilatedAttention attn(config, Device::kHost);
    std::fprintf(stderr, "no Error for %s=%s\n", name, value);
  } catch (const Error& e) {
    const bool ok = e.argument() == name && std::string(e.what()).find(message) != std::string::npos;
    std::fprintf(stderr, "%s: %s\n", e.argument().c_str(), e.what());
    std::_Exit(ok ? 0 : 1);
  }
  std::_Exit(1);
}

TEST(EnvSwitchesDeathTest, DilatedSwitchesThrowOnABadValue) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  for (const char* name :
       {"DISTATTN_DILATED_SHARE_SMS", "DISTATTN_DILATED_STRIDED_LSE", "DISTATTN_DILATED_CHAIN_LANES"}) {
    // "on" and "2" were read as "on" before (anything but "0").
    EXPECT_EXIT(construct_dilated_with(name, "on", "expected 0 or 1, got 'on'"), ::testing::ExitedWithCode(0), name)
        << name;
    EXPECT_EXIT(construct_dilated_with(name, "2", "expected 0 or 1, got '2'"), ::testing::ExitedWithCode(0), name)
        << name;
  }
  // A malformed number was the default before.
  EXPECT_EXIT(construct_dilated_with("DISTATTN_DILATED_HEAD_CHAINS", "4096x", "expected an integer >= 0, got '4096x'"),
              ::testing::ExitedWithCode(0), "DISTATTN_DILATED_HEAD_CHAINS");
  EXPECT_EXIT(construct_dilated_with("DISTATTN_DILATED_HEAD_CHAINS", "-1", "expected an integer >= 0, got '-1'"),
              ::testing::ExitedWithCode(0), "DISTATTN_DILATED_HEAD_CHAINS");
}

// The accepted values construct (the same fresh-process route: a value that throws would exit 1 through the
// catch-less path below).
void construct_dilated_ok(const char* name, const char* value) {
  setenv(name, value, 1);
  DilatedConfig config;
  config.patterns = {{8, 1}, {16, 2}};
  try {
    DilatedAttention attn(config, Device::kHost);
  } catch (const Error& e) {
    std::fprintf(stderr, "Error: %s\n", e.what());
    std::_Exit(1);
  }
  std::fprintf(stderr, "constructed\n");
  std::_Exit(0);
}

TEST(EnvSwitchesDeathTest, DilatedSwitchesTakeTheirValues) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  for (const char* name :
       {"DISTATTN_DILATED_SHARE_SMS", "DISTATTN_DILATED_STRIDED_LSE", "DISTATTN_DILATED_CHAIN_LANES"}) {
    for (const char* value : {"0", "1"}) {
      EXPECT_EXIT(construct_dilated_ok(name, value), ::testing::ExitedWithCode(0), "constructed") << name << value;
    }
  }
  for (const char* value : {"0", "1", "65536"}) {
    EXPECT_EXIT(construct_dilated_ok("DISTATTN_DILATED_HEAD_CHAINS", value), ::testing::ExitedWithCode(0),
                "constructed")
        << value;
  }
}

}  // namespace
}  // namespace distattn
