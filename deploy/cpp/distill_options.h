// The command line of segkd_distill, and its one kind of error: bad input (one line on stderr, exit status 2).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace segkd {

// Bad input: one line on stderr, exit status 2.
struct BadInput : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline std::string first_line(const std::exception& e) {
  std::string text = e.what();
  return text.substr(0, text.find('\n'));
}

struct Options {
  std::string teacher, student, list, out, root;
  int64_t steps = 1, batch_size = 2, ignore_label = 255;
  double lr = 0.01, head_lr_mult = 10.0, momentum = 0.9, weight_decay = 1e-4;
  double temperature = 1.0, kd_weight = 1.0, ce_weight = 1.0, aux_weight = 0.4;
  bool overwrite = false, root_given = false;
};

inline const char* const USAGE =
    "usage: segkd_distill TEACHER.pt STUDENT.pt LIST OUT.pt [--steps N] [--batch-size B] [--lr X] "
    "[--head-lr-mult X] [--momentum X] [--weight-decay X] [--temperature T] [--kd-weight X] [--ce-weight X] "
    "[--aux-weight X] [--ignore-label I] [--root DIR] [--overwrite]";

inline double number(const std::string& flag, const std::string& text) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) throw BadInput(flag + " " + text + ": not a number");
  return value;
}

inline int64_t integer(const std::string& flag, const std::string& text, int64_t low) {
  double value = number(flag, text);
  if (value != static_cast<double>(static_cast<int64_t>(value)) || value < low) {
    throw BadInput(flag + " " + text + ": must be an integer >= " + std::to_string(low));
  }
  return static_cast<int64_t>(value);
}

inline Options parse(int argc, char** argv) {
  Options o;
  std::vector<std::string> positional;
  std::map<std::string, double*> reals = {{"--lr", &o.lr}, {"--head-lr-mult", &o.head_lr_mult},
                                          {"--momentum", &o.momentum}, {"--weight-decay", &o.weight_decay},
                                          {"--temperature", &o.temperature}, {"--kd-weight", &o.kd_weight},
                                          {"--ce-weight", &o.ce_weight}, {"--aux-weight", &o.aux_weight}};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--overwrite") {
      o.overwrite = true;
    } else if (a.rfind("--", 0) == 0) {
      if (i + 1 >= argc) throw BadInput(a + ": needs a value (" + USAGE + ")");
      std::string v = argv[++i];
      if (reals.count(a)) *reals[a] = number(a, v);
      else if (a == "--steps") o.steps = integer(a, v, 1);
      else if (a == "--batch-size") o.batch_size = integer(a, v, 1);
      else if (a == "--ignore-label") o.ignore_label = integer(a, v, 0);
      else if (a == "--root") o.root = v;
      else throw BadInput(a + ": unknown option (" + USAGE + ")");
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() != 4) throw BadInput(USAGE);
  o.teacher = positional[0], o.student = positional[1], o.list = positional[2], o.out = positional[3];
  if (o.temperature <= 0) throw BadInput("--temperature must be > 0");
  o.root_given = !o.root.empty();
  if (!o.root_given) o.root = std::filesystem::path(o.list).parent_path().string();
  return o;
}

}  // namespace segkd
