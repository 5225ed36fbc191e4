#include "json.h"

#include <cmath>
#include <cstdio>

namespace distattn {
namespace bench {

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

JsonObject& JsonObject::raw(const std::string& key, const std::string& text) {
  for (auto& f : fields_) {
    if (f.first == key) {
      f.second = text;
      return *this;
    }
  }
  fields_.emplace_back(key, text);
  return *this;
}

JsonObject& JsonObject::set_array(const std::string& key, const std::vector<JsonObject>& items, bool one_per_line) {
  std::string text = "[";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) text += ",";
    if (one_per_line) text += "\n    ";
    text += items[i].str();
  }
  if (one_per_line && !items.empty()) text += "\n  ";
  return raw(key, text + "]");
}

std::string JsonObject::str() const {
  std::string out = "{";
  for (size_t i = 0; i < fields_.size(); ++i) {
    if (i) out += ", ";
    out += json_quote(fields_[i].first) + ": " + fields_[i].second;
  }
  return out + "}";
}

}  // namespace bench
}  // namespace distattn
