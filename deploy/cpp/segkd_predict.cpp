// segkd_predict: segment one image with a TorchScript file written by `python -m tools.export --format torchscript`
// and write its class indices as an 8-bit grey PNG (what predict.py writes as <stem>.png).
//
//     deploy/cpp/build/segkd_predict MODEL.pt IMAGE OUT.png [--overwrite]
//
// The exported network takes float32 1x3xHxW RGB on the 0..255 scale (normalised inside) and returns 1xKxHxW logits
// at the input's size; the class map is their argmax. The image goes through at its own size, once: predict.py's
// protocol with test.mode=whole test.scales=[1.0] test.flip=false and test.base_size at the image's long side.
// Images are read with stb_image (PNG, JPEG, BMP, PPM, ...) and written with stb_image_write (Debian's libstb-dev).
// Exit status: 0 written; 2 bad input (unreadable model or image, OUT exists, usage); 1 inference failed.
#include <torch/script.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

namespace {

int fail(int status, const std::string& message) {
  std::cerr << "error: " << message << std::endl;
  return status;
}

// The first line of a libtorch error (its messages carry a C++ and a Python traceback).
std::string first_line(const std::exception& e) {
  std::string text = e.what();
  return text.substr(0, text.find('\n'));
}

}  // namespace

int main(int argc, char** argv) {
  bool overwrite = false;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--overwrite") overwrite = true;
    else args.push_back(a);
  }
  if (args.size() != 3) {
    return fail(2, "usage: segkd_predict MODEL.pt IMAGE OUT.png [--overwrite]");
  }
  const std::string& model_path = args[0];
  const std::string& image_path = args[1];
  const std::string& out_path = args[2];
  if (std::filesystem::exists(out_path) && !overwrite) {
    return fail(2, out_path + ": already exists; remove it or pass --overwrite (nothing was written)");
  }

  torch::jit::Module module;
  try {
    module = torch::jit::load(model_path, torch::kCPU);
  } catch (const std::exception& e) {
    return fail(2, model_path + ": not a loadable TorchScript file (" + first_line(e) + ")");
  }
  module.eval();

  int width = 0, height = 0, channels = 0;
  // stbi_load converts grey and RGBA to 3 channels; the pixels are row-major HxWx3 uint8.
  std::unique_ptr<unsigned char, void (*)(void*)> pixels(stbi_load(image_path.c_str(), &width, &height, &channels, 3),
                                                         stbi_image_free);
  if (!pixels) {
    return fail(2, image_path + ": cannot read image (" + stbi_failure_reason() + ")");
  }

  torch::Tensor labels;
  try {
    c10::InferenceMode guard;
    torch::Tensor image = torch::from_blob(pixels.get(), {1, height, width, 3}, torch::kUInt8);
    torch::Tensor input = image.permute({0, 3, 1, 2}).to(torch::kFloat32).contiguous();
    torch::Tensor logits = module.forward({input}).toTensor();
    if (logits.dim() != 4 || logits.size(0) != 1 || logits.size(2) != height || logits.size(3) != width) {
      return fail(1, model_path + ": output of shape " + c10::str(logits.sizes()) + " for a " +
                         std::to_string(height) + "x" + std::to_string(width) + " image (expected 1xKxHxW)");
    }
    if (logits.size(1) > 256) {
      return fail(1, model_path + ": " + std::to_string(logits.size(1)) + " classes do not fit an 8-bit PNG");
    }
    labels = logits.argmax(1)[0].to(torch::kUInt8).contiguous();
  } catch (const std::exception& e) {
    return fail(1, image_path + ": inference failed (" + first_line(e) + ")");
  }

  // written to a temporary name first: an interrupted run leaves no half-written OUT
  const std::string tmp = out_path + ".tmp";
  if (!stbi_write_png(tmp.c_str(), width, height, 1, labels.data_ptr<uint8_t>(), width)) {
    std::remove(tmp.c_str());
    return fail(2, out_path + ": cannot write");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, out_path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    return fail(2, out_path + ": cannot write (" + ec.message() + ")");
  }
  std::cout << "wrote " << out_path << ": " << height << "x" << width << " class indices" << std::endl;
  return 0;
}
