// segkd_distill: train a student in C++ with CE + per-pixel KD from a teacher, both TorchScript files written by
// `python -m tools.export` (the teacher as deployed, the student with --trainable), and write the trained student.
//
//     deploy/cpp/build/segkd_distill TEACHER.pt STUDENT.pt LIST OUT.pt [--steps 1] [--batch-size 2] [--lr 0.01]
//         [--head-lr-mult 10] [--momentum 0.9] [--weight-decay 1e-4] [--temperature 1] [--kd-weight 1]
//         [--ce-weight 1] [--aux-weight 0.4] [--ignore-label 255] [--root DIR] [--overwrite]
//
// LIST holds "image label" per line (VOC style), paths relative to --root (default: LIST's folder) unless absolute.
// Step s takes the B entries s*B .. s*B+B-1 of LIST (cyclically, in order: no shuffle, no crop, no resize), so the
// images of one batch must share a size. Images are RGB (stb_image: PNG, JPEG, BMP, ...; grey and RGBA become RGB),
// fed as float32 0..255 (both networks normalise inside); labels are class indices: 8-bit greyscale, or a palette PNG
// whose palette indices are the classes (VOC's SegmentationClass, tools.synthetic's labels: what PIL reads as "P").
//
// One step, with s = the student's (main, aux) logits and t = the teacher's logits, all NxKxHxW at the image's size:
//     loss = ce_weight * CE(s.main) + aux_weight * CE(s.aux) + kd_weight * T^2 * mean_valid KL(softmax(t/T) || softmax(s.main/T))
// CE and the KL mean run over the pixels whose label is not --ignore-label (model/losses.py's cross_entropy and
// kd_kl_loss with distill.full_resolution=true), then SGD (momentum, weight decay on every parameter; backbone at
// --lr, the rest at --lr x --head-lr-mult, as train.py's groups; constant lr). The student's BatchNorm statistics
// are frozen (exported in eval mode: tools.export --trainable). The teacher runs without grad.
// Exit status: 0 written; 2 bad input (usage, unreadable or non-trainable model, unreadable list or image, a label
// that is not class indices, sizes that do not match, OUT exists), one line naming the file, nothing written; 1 a step
// failed.
#include <torch/optim/sgd.h>
#include <torch/script.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>

#include "distill_options.h"
#include "png_palette.h"

namespace {

using namespace segkd;  // BadInput, Options, parse, first_line; png_header, with_index_palette

const char* const TRAINABLE_EXTRA = "segkd_trainable.json";  // engine/export.py's mark of a trainable student
const char* const BACKBONE_PREFIX = "segmentor.backbone.";    // engine/export.py's BACKBONE_PREFIX

struct Sample {
  std::string image, label;
  int height = 0, width = 0;
  bool palette = false;  // a palette PNG, read as its indices (palette_indices); false: 8-bit greyscale
};

// Whether a label is a palette PNG (true) or an 8-bit greyscale image (false), from the header, nothing decoded;
// anything else is bad input saying what the file is.
bool palette_label(const std::string& path, int channels) {
  std::string kind;
  if (std::optional<PngHeader> png = png_header(path)) {
    if (png->colour_type == 3 && png->has_palette) return true;
    if (png->colour_type == 0 && png->bit_depth <= 8) return false;
    const std::map<int, std::string> kinds = {{0, "a greyscale PNG"}, {2, "an RGB PNG"}, {3, "a palette PNG without PLTE"},
                                              {4, "a greyscale + alpha PNG"}, {6, "an RGBA PNG"}};
    kind = kinds.count(png->colour_type) ? kinds.at(png->colour_type)
                                         : "a PNG of colour type " + std::to_string(png->colour_type);
    if (png->bit_depth != 8) kind += ", " + std::to_string(png->bit_depth) + " bits";
  } else {
    const bool wide = stbi_is_16_bit(path.c_str());
    if (channels == 1 && !wide) return false;
    const char* kinds[] = {"an image", "a greyscale image", "a greyscale + alpha image", "an RGB image", "an RGBA image"};
    kind = std::string(kinds[channels >= 1 && channels <= 4 ? channels : 0]) + (wide ? ", 16 bits" : "");
  }
  throw BadInput(path + ": a label must hold class indices as an 8-bit greyscale or a palette image (this one is " +
                 kind + ")");
}

// A hint for a file of the list not found under --root when the list sits in a folder named `list` and the file is
// under that folder's parent: this project's layout (tools.synthetic's ROOT/list/train_aug.txt, paths relative to
// ROOT), and VOC aug's. The default root stays the list's folder; the hint says which --root would have found it.
std::string root_hint(const Options& o, const std::string& relative) {
  namespace fs = std::filesystem;
  const fs::path folder = fs::path(o.list).parent_path();
  if (folder.filename() != "list" || fs::path(relative).is_absolute()) return "";
  const fs::path parent = folder.parent_path().empty() ? fs::path(".") : folder.parent_path();
  std::error_code ec;
  if (!fs::exists(parent / relative, ec) || fs::exists(fs::path(o.root) / relative, ec)) return "";
  return (o.root_given ? " (it is under the list folder's parent: --root " : " (--root defaults to the list's folder; "
                                                                             "the VOC layout's root is its parent: --root ") +
         parent.string() + ")";
}

// The list's samples, every image and label header read (size, channels) and checked: nothing is decoded yet.
std::vector<Sample> read_list(const Options& o) {
  std::ifstream in(o.list);
  if (!in) throw BadInput(o.list + ": cannot read the list file");
  std::vector<Sample> samples;
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    std::istringstream fields(line);
    std::vector<std::string> f;
    for (std::string w; fields >> w;) f.push_back(w);
    if (f.empty()) continue;
    if (f.size() != 2) {
      throw BadInput(o.list + ":" + std::to_string(lineno) + ": expected 'image label', got " +
                     std::to_string(f.size()) + " fields");
    }
    auto resolve = [&](const std::string& p) {
      return std::filesystem::path(p).is_absolute() ? p : (std::filesystem::path(o.root) / p).string();
    };
    Sample s{resolve(f[0]), resolve(f[1])};
    int channels = 0, lw = 0, lh = 0, lc = 0;
    if (!stbi_info(s.image.c_str(), &s.width, &s.height, &channels)) {
      throw BadInput(s.image + ": cannot read image (" + stbi_failure_reason() + ")" + root_hint(o, f[0]));
    }
    if (!stbi_info(s.label.c_str(), &lw, &lh, &lc)) {
      throw BadInput(s.label + ": cannot read label (" + stbi_failure_reason() + ")" + root_hint(o, f[1]));
    }
    s.palette = palette_label(s.label, lc);
    if (lw != s.width || lh != s.height) {
      throw BadInput(s.label + ": " + std::to_string(lh) + "x" + std::to_string(lw) + " label, its image " + s.image +
                     " is " + std::to_string(s.height) + "x" + std::to_string(s.width));
    }
    samples.push_back(s);
  }
  if (samples.empty()) throw BadInput(o.list + ": no 'image label' line");
  return samples;
}

std::vector<const Sample*> batch_of(const std::vector<Sample>& samples, int64_t step, int64_t batch_size) {
  std::vector<const Sample*> batch;
  for (int64_t j = 0; j < batch_size; ++j) batch.push_back(&samples[(step * batch_size + j) % samples.size()]);
  return batch;
}

// Every batch the run takes has images of one size (the batch is stacked as it is: no crop, no resize).
void check_batches(const std::vector<Sample>& samples, const Options& o) {
  for (int64_t step = 0; step < o.steps; ++step) {
    auto batch = batch_of(samples, step, o.batch_size);
    for (const Sample* s : batch) {
      if (s->height != batch[0]->height || s->width != batch[0]->width) {
        throw BadInput(s->image + ": " + std::to_string(s->height) + "x" + std::to_string(s->width) +
                       ", the batch of step " + std::to_string(step + 1) + " starts with " + batch[0]->image + " at " +
                       std::to_string(batch[0]->height) + "x" + std::to_string(batch[0]->width) +
                       " (one batch, one size: --batch-size 1 or images of one size)");
      }
    }
  }
}

using Pixels = std::unique_ptr<unsigned char, void (*)(void*)>;

// stbi_load's pixels as a tensor of `channels` x H x W (a copy: the buffer is freed here).
torch::Tensor load_pixels(const std::string& path, int channels, const char* what) {
  int w = 0, h = 0, c = 0;
  Pixels pixels(stbi_load(path.c_str(), &w, &h, &c, channels), stbi_image_free);
  if (!pixels) throw BadInput(path + ": cannot read " + what + " (" + stbi_failure_reason() + ")");
  return torch::from_blob(pixels.get(), {h, w, channels}, torch::kUInt8).permute({2, 0, 1}).clone();
}

// A palette label's pixels as their palette indices, H x W uint8: exactly PIL's "P" (data/dataset.py's read_label),
// whatever the palette holds (fewer entries than the largest index, entries sharing a colour). stb_image only gives
// colours, so it decodes the file with its palette rewritten to entry i = (i, 0, 0), and each pixel's red is its index.
torch::Tensor palette_indices(const Sample& s) {
  std::ifstream in(s.label, std::ios::binary);
  if (!in) throw BadInput(s.label + ": cannot read label");
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string png = with_index_palette(file);
  int h = 0, w = 0, c = 0;
  Pixels pixels(stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(png.data()), static_cast<int>(png.size()), &w,
                                      &h, &c, 3),
                stbi_image_free);
  if (!pixels) throw BadInput(s.label + ": cannot read label (" + stbi_failure_reason() + ")");
  return torch::from_blob(pixels.get(), {h, w, 3}, torch::kUInt8).select(2, 0).clone();
}

// Images B x 3 x H x W float32 0..255 of one batch.
torch::Tensor load_images(const std::vector<const Sample*>& batch) {
  std::vector<torch::Tensor> images;
  for (const Sample* s : batch) images.push_back(load_pixels(s->image, 3, "image").to(torch::kFloat32));
  return torch::stack(images);
}

// Labels B x H x W int64 of one batch; a value that is neither a class of K nor the ignore label is bad input.
torch::Tensor load_labels(const std::vector<const Sample*>& batch, int64_t classes, int64_t ignore_label) {
  std::vector<torch::Tensor> labels;
  for (const Sample* s : batch) {
    torch::Tensor label =
        (s->palette ? palette_indices(*s) : load_pixels(s->label, 1, "label")[0]).to(torch::kInt64);
    torch::Tensor bad = (label >= classes) & (label != ignore_label);
    if (bad.any().item<bool>()) {
      throw BadInput(s->label + ": class index " + std::to_string(label.masked_select(bad)[0].item<int64_t>()) +
                     " is neither one of the student's " + std::to_string(classes) + " classes nor --ignore-label " +
                     std::to_string(ignore_label));
    }
    labels.push_back(label);
  }
  return torch::stack(labels);
}

// model/losses.py's cross_entropy on logits already at the label's size: summed over valid pixels / their count.
torch::Tensor cross_entropy(const torch::Tensor& logits, const torch::Tensor& target, int64_t ignore) {
  torch::Tensor loss = at::cross_entropy_loss(logits, target, {}, at::Reduction::Sum, ignore);
  return loss / (target != ignore).sum().clamp_min(1);
}

// model/losses.py's kd_kl_loss (full resolution): T^2 x mean over valid pixels of KL(softmax(t/T) || softmax(s/T)).
torch::Tensor kd_kl(const torch::Tensor& student, const torch::Tensor& teacher, const torch::Tensor& target,
                    double temperature, int64_t ignore) {
  torch::Tensor log_p_s = torch::log_softmax(student / temperature, 1);
  torch::Tensor log_p_t = torch::log_softmax(teacher / temperature, 1);
  torch::Tensor kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1);
  torch::Tensor valid = (target != ignore).to(kl.scalar_type());
  return (kl * valid).sum() / valid.sum().clamp_min(1) * (temperature * temperature);
}

torch::jit::Module load_module(const std::string& path, torch::jit::ExtraFilesMap& extra) {
  try {
    return torch::jit::load(path, torch::kCPU, extra);
  } catch (const std::exception& e) {
    throw BadInput(path + ": not a loadable TorchScript file (" + first_line(e) + ")");
  }
}

// The optimizer over the student's parameters that require grad: backbone at lr, the rest at lr x head_lr_mult.
std::unique_ptr<torch::optim::SGD> make_sgd(torch::jit::Module& student, const Options& o) {
  std::vector<torch::Tensor> backbone, heads;
  for (const auto& p : student.named_parameters(true)) {
    if (!p.value.requires_grad()) continue;
    (p.name.rfind(BACKBONE_PREFIX, 0) == 0 ? backbone : heads).push_back(p.value);
  }
  if (backbone.empty() && heads.empty()) {
    throw BadInput(o.student + ": no parameter requires grad (export it with python -m tools.export --trainable)");
  }
  auto options = [&](double lr) {
    return std::make_unique<torch::optim::SGDOptions>(
        torch::optim::SGDOptions(lr).momentum(o.momentum).weight_decay(o.weight_decay));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!backbone.empty()) groups.emplace_back(backbone, options(o.lr));
  if (!heads.empty()) groups.emplace_back(heads, options(o.lr * o.head_lr_mult));
  return std::make_unique<torch::optim::SGD>(groups, *options(o.lr));
}

// One step: forward both networks, the loss, backward, SGD. Prints the loss and its terms (9 digits).
void step(torch::jit::Module& teacher, torch::jit::Module& student, torch::optim::SGD& sgd,
          const std::vector<const Sample*>& batch, const Options& o, int64_t index) {
  torch::Tensor images = load_images(batch);
  torch::Tensor t;
  {
    torch::NoGradGuard no_grad;  // the teacher is frozen: no graph, no gradient
    auto out = teacher.forward({images});
    if (!out.isTensor()) throw BadInput(o.teacher + ": returns no logit tensor (export it without --trainable)");
    t = out.toTensor();
  }
  auto out = student.forward({images});
  if (!out.isTuple() || out.toTupleRef().elements().size() != 2) {
    throw BadInput(o.student + ": returns no (main, aux) pair of logits (export it with tools.export --trainable)");
  }
  torch::Tensor main = out.toTupleRef().elements()[0].toTensor(), aux = out.toTupleRef().elements()[1].toTensor();
  if (t.sizes() != main.sizes()) {
    throw BadInput(o.teacher + ": logits of shape " + c10::str(t.sizes()) + ", the student's " +
                   c10::str(main.sizes()) + " (same classes and input size needed)");
  }
  torch::Tensor labels = load_labels(batch, main.size(1), o.ignore_label);
  torch::Tensor ce = cross_entropy(main, labels, o.ignore_label);
  torch::Tensor ce_aux = cross_entropy(aux, labels, o.ignore_label);
  torch::Tensor kd = kd_kl(main, t, labels, o.temperature, o.ignore_label);
  torch::Tensor loss = o.ce_weight * ce + o.aux_weight * ce_aux + o.kd_weight * kd;  // Distiller's order of terms
  sgd.zero_grad();
  loss.backward();
  sgd.step();
  std::cout << std::setprecision(9) << "step " << index + 1 << "/" << o.steps << ": loss " << loss.item<double>()
            << " (ce " << ce.item<double>() << ", aux " << ce_aux.item<double>() << ", kd " << kd.item<double>()
            << ")" << std::endl;
}

int run(const Options& o) {
  if (std::filesystem::exists(o.out) && !o.overwrite) {
    throw BadInput(o.out + ": already exists; remove it or pass --overwrite (nothing was written)");
  }
  torch::jit::ExtraFilesMap none, marked{{TRAINABLE_EXTRA, ""}};
  torch::jit::Module teacher = load_module(o.teacher, none);
  torch::jit::Module student = load_module(o.student, marked);
  if (marked[TRAINABLE_EXTRA].empty()) {
    throw BadInput(o.student + ": not a trainable student (export it with python -m tools.export --trainable)");
  }
  teacher.eval();
  for (const auto& p : teacher.parameters()) p.requires_grad_(false);
  auto sgd = make_sgd(student, o);
  std::vector<Sample> samples = read_list(o);
  check_batches(samples, o);

  try {
    for (int64_t s = 0; s < o.steps; ++s) step(teacher, student, *sgd, batch_of(samples, s, o.batch_size), o, s);
  } catch (const BadInput&) {
    throw;
  } catch (const std::exception& e) {
    std::cerr << "error: " << o.student << ": a distillation step failed (" << first_line(e) << ")" << std::endl;
    return 1;
  }

  // written to a temporary name first (with the trainable mark, so OUT can be trained again): no half-written OUT
  const std::string tmp = o.out + ".tmp";
  try {
    student.save(tmp, marked);
  } catch (const std::exception& e) {
    std::remove(tmp.c_str());
    throw BadInput(o.out + ": cannot write (" + first_line(e) + ")");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, o.out, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw BadInput(o.out + ": cannot write (" + ec.message() + ")");
  }
  std::cout << "wrote " << o.out << ": the student after " << o.steps << " step(s) of batch " << o.batch_size
            << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const BadInput& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 2;
  }
}
