// A small JSON builder for the benchmark reports: objects keep their keys in insertion order; values
// are serialised when set. Non-finite numbers become null.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace distattn {
namespace bench {

std::string json_quote(const std::string& s);  // "..." with escapes
std::string json_number(double v);             // shortest round-trip-ish text; null when not finite

class JsonObject {
 public:
  JsonObject& set(const std::string& key, const std::string& value) { return raw(key, json_quote(value)); }
  JsonObject& set(const std::string& key, const char* value) { return raw(key, json_quote(value)); }
  JsonObject& set(const std::string& key, double value) { return raw(key, json_number(value)); }
  JsonObject& set(const std::string& key, int64_t value) { return raw(key, std::to_string(value)); }
  JsonObject& set(const std::string& key, int value) { return raw(key, std::to_string(value)); }
  JsonObject& set(const std::string& key, bool value) { return raw(key, value ? "true" : "false"); }
  JsonObject& set(const std::string& key, const JsonObject& value) { return raw(key, value.str()); }
  JsonObject& set_null(const std::string& key) { return raw(key, "null"); }
  JsonObject& set_array(const std::string& key, const std::vector<JsonObject>& items, bool one_per_line = true);
  JsonObject& raw(const std::string& key, const std::string& text);  // replaces an existing key
  std::string str() const;                                           // {"k": v, ...} on one line

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

}  // namespace bench
}  // namespace distattn
