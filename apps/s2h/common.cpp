#include "apps/s2h/common.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>

#include "data/cifar.h"
#include "data/idx.h"
#include "data/image_folder.h"
#include "data/text.h"
#include "data/transforms.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/precision.h"
#include "kernels/cuda/runtime.h"
#include "models/narrow.h"

namespace s2h::app {

namespace fs = std::filesystem;

const std::vector<DatasetInfo>& dataset_infos() {
  static const std::vector<DatasetInfo> infos = {
      {"fashion-mnist", "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz", kDefaultFashionMnistRoot, false},
      {"cifar10", "the official binary release: data_batch_1.bin .. data_batch_5.bin, test_batch.bin",
       "$cifar-10-batches-bin", false},
      {"cifar100", "the official binary release: train.bin, test.bin (fine labels)", "$cifar-100-binary", false},
      {"cifar10-jpeg", "train/<class>/*.jpg and test/<class>/*.jpg", "$cifar-10-jpeg", false},
      {"image-folder", "train/<class>/*.{jpg,png} and val/<class>/... (or test/<class>/...)", "", false},
      {"tiny-imagenet", "the original layout: wnids.txt, train/<wnid>/images/, val/images/, val/val_annotations.txt",
       "$tiny-imagenet-200", false},
      {"sst2", "GLUE SST-2: train.tsv, dev.tsv", "$glue/SST-2", true},
      {"rte", "GLUE RTE: train.tsv, dev.tsv", "$glue/RTE", true},
      {"cola", "GLUE CoLA: train.tsv, dev.tsv", "$glue/CoLA", true},
  };
  return infos;
}

std::string dataset_names() {
  std::string s;
  for (const auto& d : dataset_infos()) s += (s.empty() ? "" : ", ") + std::string(d.name);
  return s;
}

namespace {

const DatasetInfo& dataset_info(const std::string& name) {
  for (const auto& d : dataset_infos())
    if (name == d.name) return d;
  S2H_FAIL("--data: unknown dataset '{}' (available: {})", name, dataset_names());
}

std::string resolve_root(const DataOptions& opt, const DatasetInfo& info) {
  std::string root = opt.root;
  if (root.empty()) {
    const std::string def = info.default_root;
    if (def.empty())
      S2H_FAIL("--data {} needs --data-root (a folder holding {})", opt.name, info.root_layout);
    if (def[0] != '$') {
      root = def;
    } else {
      const char* base = std::getenv("S2H_DATA_DIR");
      S2H_CHECK(base != nullptr && *base != '\0',
                "--data {} needs --data-root, or S2H_DATA_DIR set to a folder holding {} (a folder with {})", opt.name,
                def.substr(1), info.root_layout);
      root = (fs::path(base) / def.substr(1)).string();
    }
  }
  S2H_CHECK(fs::is_directory(root), "--data-root {}: no such folder (--data {} reads {})", root, opt.name,
            info.root_layout);
  return root;
}

struct Norm {
  std::vector<float> mean, std;
};

}  // namespace

DataSplits load_data(const DataOptions& opt, bool with_train) {
  const DatasetInfo& info = dataset_info(opt.name);
  S2H_CHECK(opt.image_size >= 0, "--image-size must be >= 0, got {}", opt.image_size);
  DataSplits out;
  out.root = resolve_root(opt, info);
  out.test_split = "test";
  models::ModelConfig& geo = out.geometry;

  if (info.text) {
    data::TextOptions to;
    to.max_len = opt.max_len;
    to.vocab_size = opt.vocab_size;
    to.cache_dir = opt.cache_dir;
    const data::GlueData glue = data::load_glue(opt.name, out.root, to);
    out.train = glue.train;
    out.test = glue.dev;
    out.test_split = "dev";
    out.augment = "none";
    geo.num_classes = glue.train->num_classes();
    geo.vocab_size = glue.vocab_size;
    geo.max_len = opt.max_len;
    geo.in_channels = 0;
    geo.image_size = 0;
    out.note = fmt::format("tokenizer: {} ({} pieces, {})", glue.tokenizer_path, glue.vocab_size,
                           glue.tokenizer_cached ? "from the cache" : "trained now");
  } else if (opt.name == "fashion-mnist") {
    S2H_CHECK(opt.augment == "auto" || opt.augment == "none",
              "--augment {}: fashion-mnist is read into memory already normalised and takes no augmentation",
              opt.augment);
    S2H_CHECK(opt.image_size == 0 || opt.image_size == 28, "--image-size {}: fashion-mnist images are 28x28",
              opt.image_size);
    out.augment = "none";
    if (with_train) out.train = std::make_shared<data::TensorSource>(data::load_fashion_mnist(out.root, "train"));
    out.test = std::make_shared<data::TensorSource>(data::load_fashion_mnist(out.root, "test"));
    geo.num_classes = 10;
    geo.in_channels = 1;
    geo.image_size = 28;
  } else {
    // Colour image datasets: native size and normalisation.
    int64_t native = 32;
    Norm norm{data::cifar10_mean(), data::cifar10_std()};
    if (opt.name == "cifar100") norm = {data::cifar100_mean(), data::cifar100_std()};
    if (opt.name == "tiny-imagenet") {
      native = 64;
      norm = {data::tiny_imagenet_mean(), data::tiny_imagenet_std()};
    }
    if (opt.name == "image-folder") {
      native = 224;
      norm = {{0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}};  // ImageNet statistics
    }
    const int64_t size = opt.image_size > 0 ? opt.image_size : native;
    out.augment = opt.augment == "auto" ? "crop-flip" : opt.augment;
    const data::ImageTransform train_tf = data::train_transform(out.augment, size, norm.mean, norm.std);
    const data::ImageTransform test_tf = data::eval_transform(size, norm.mean, norm.std);
    if (opt.name == "cifar10" || opt.name == "cifar100") {
      const int variant = opt.name == "cifar10" ? 10 : 100;
      if (with_train) out.train = data::load_cifar_binary(out.root, variant, "train", train_tf);
      out.test = data::load_cifar_binary(out.root, variant, "test", test_tf);
    } else if (opt.name == "tiny-imagenet") {
      if (with_train) out.train = data::load_tiny_imagenet(out.root, "train", train_tf);
      out.test = data::load_tiny_imagenet(out.root, "val", test_tf);
      out.test_split = "val";
    } else {
      // cifar10-jpeg and image-folder: class folders; the test split uses the train split's classes.
      const fs::path train_dir = fs::path(out.root) / "train";
      S2H_CHECK(fs::is_directory(train_dir), "--data-root {}: no train/ folder (--data {} reads {})", out.root,
                opt.name, info.root_layout);
      fs::path test_dir = fs::path(out.root) / "test";
      if (opt.name == "image-folder" && !fs::is_directory(test_dir)) {
        test_dir = fs::path(out.root) / "val";
        out.test_split = "val";
      }
      S2H_CHECK(fs::is_directory(test_dir), "--data-root {}: no {}/ folder (--data {} reads {})", out.root,
                out.test_split, opt.name, info.root_layout);
      const std::vector<std::string> classes = data::image_folder_classes(train_dir.string());
      if (with_train) out.train = data::load_image_folder(train_dir.string(), train_tf, opt.name + "/train", classes);
      out.test = data::load_image_folder(test_dir.string(), test_tf, opt.name + "/" + out.test_split, classes);
    }
    geo.num_classes = out.test->num_classes();
    geo.in_channels = 3;
    geo.image_size = size;
  }
  if (with_train) out.train = data::subset(out.train, opt.limit_train);
  out.test = data::subset(out.test, opt.limit_test);
  return out;
}

EvalResult evaluate(Module& model, const data::SourcePtr& source, int64_t batch_size, int workers) {
  const auto t0 = std::chrono::steady_clock::now();
  Tensor labels;
  const Tensor logits = predict_logits(model, source, batch_size, workers, &labels);
  EvalResult r;
  {
    NoGradGuard guard;
    r.loss = cross_entropy(logits, labels).item();
  }
  r.correct = count_correct(logits, labels);
  r.total = labels.numel();
  r.accuracy = static_cast<double>(r.correct) / static_cast<double>(r.total);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

ModulePtr model_from_checkpoint(const SafetensorsFile& file, const std::string& path) {
  const std::string model_name = metadata_value(file.metadata, "model", path, "model checkpoint");
  ModulePtr model;
  if (auto it = file.metadata.find("architecture"); it != file.metadata.end()) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(it->second);
    } catch (const nlohmann::json::exception& e) {
      S2H_FAIL("{}: the architecture in the metadata is not valid JSON ({})", path, e.what());
    }
    model = models::build_narrow(models::Architecture::from_json(j, path));
  } else {
    model = models::make_model(model_name, geometry_from_metadata(file.metadata, path));
  }
  try {
    model->load_state_dict(file.tensors);
  } catch (const Error& e) {
    S2H_FAIL("{}: {}", path, e.what());
  }
  return model;
}

Tensor predict_logits(Module& model, const data::SourcePtr& source, int64_t batch_size, int workers, Tensor* labels) {
  const bool was_training = model.is_training();
  model.eval();
  NoGradGuard guard;
  data::LoaderOptions lo;
  lo.batch_size = batch_size;
  lo.shuffle = false;
  lo.workers = workers;
  const Device dev = model.device();
  lo.pin_memory = dev.is_cuda();
  data::Loader loader(source, lo);
  loader.start();
  std::vector<Tensor> outs, labs;
  while (std::optional<data::Batch> batch = loader.next()) {
    // Logits come back to the host in fp32 (bf16 under the bf16 policy on CUDA).
    outs.push_back(model(batch->inputs.to(dev)).to(Device::cpu()).to(DType::F32).contiguous());
    labs.push_back(batch->labels);
  }
  model.train(was_training);
  S2H_CHECK(!outs.empty(), "predict: the source {} is empty", source->name());
  if (labels) *labels = concat(labs, 0);
  return concat(outs, 0);
}

std::map<std::string, std::string> checkpoint_metadata(const std::string& model, const models::ModelConfig& cfg,
                                                       const DataOptions& data) {
  return {{"format", "s2h-model-v1"},
          {"model", model},
          {"num_classes", std::to_string(cfg.num_classes)},
          {"in_channels", std::to_string(cfg.in_channels)},
          {"image_size", std::to_string(cfg.image_size)},
          {"vocab_size", std::to_string(cfg.vocab_size)},
          {"max_len", std::to_string(cfg.max_len)},
          {"imagenet_stem", cfg.imagenet_stem ? "1" : "0"},
          {"patch_size", std::to_string(cfg.patch_size)},
          {"dataset", data.name},
          {"data_root", data.root},
          {"tokenizer_vocab_size", std::to_string(data.vocab_size)},
          {"layout", "activations NHWC; conv weights [out][kh][kw][in]"}};
}

std::string metadata_value(const std::map<std::string, std::string>& meta, const std::string& key,
                           const std::string& file, const char* what, const char* fallback) {
  auto it = meta.find(key);
  if (it != meta.end()) return it->second;
  S2H_CHECK(fallback != nullptr, "{}: not an s2h {} (metadata '{}' is missing)", file, what, key);
  return fallback;
}

models::ModelConfig geometry_from_metadata(const std::map<std::string, std::string>& meta, const std::string& file) {
  auto get = [&](const char* key, const char* fallback) {
    return metadata_value(meta, key, file, "model checkpoint", fallback);
  };
  models::ModelConfig cfg;
  try {
    cfg.num_classes = std::stoll(get("num_classes", nullptr));
    cfg.in_channels = std::stoll(get("in_channels", nullptr));
    cfg.image_size = std::stoll(get("image_size", nullptr));
    // Checkpoints written before text models existed lack these.
    cfg.vocab_size = std::stoll(get("vocab_size", "0"));
    cfg.max_len = std::stoll(get("max_len", "0"));
    cfg.imagenet_stem = get("imagenet_stem", "0") == "1";
    cfg.patch_size = std::stoll(get("patch_size", "0"));
  } catch (const std::logic_error&) {
    S2H_FAIL("{}: malformed model geometry in the metadata", file);
  }
  return cfg;
}

std::string device_label(Device dev) {
  if (dev.is_cpu()) return "cpu";
  return fmt::format("{} ({}, {})", dev.str(), cuda::device_name(dev.index), precision_name(precision()));
}

void validate_device_flags(const std::string& device, const std::string& precision) {
  Precision prec;
  Device dev;
  try {
    prec = parse_precision(precision);
  } catch (const Error& e) {
    S2H_FAIL("--precision: {}", e.what());
  }
  try {
    dev = Device::parse(device);
  } catch (const Error& e) {
    S2H_FAIL("--device: {}", e.what());
  }
  if (dev.is_cuda()) {
    S2H_CHECK(cuda::compiled(), "--device {}: this build has no CUDA backend (nvcc was not found when it was built)",
              device);
    std::string why;
    const int n = cuda::device_count(&why);
    S2H_CHECK(n > 0, "--device {}: no usable GPU here ({})", device, why);
    S2H_CHECK(dev.index < n, "--device {}: this machine has {} GPU{} (cuda:0 to cuda:{})", device, n, n == 1 ? "" : "s",
              n - 1);
  } else {
    S2H_CHECK(prec == Precision::FP32, "--precision {}: the CPU computes in fp32 only (use it with --device cuda)",
              precision);
  }
}

Device setup_device(const std::string& device, const std::string& precision) {
  validate_device_flags(device, precision);
  set_precision(parse_precision(precision));
  return Device::parse(device);
}

void check_kernels_flag(const std::string& kernels) {
  S2H_CHECK(kernels == "fused" || kernels == "library", "--kernels must be fused or library, got '{}'", kernels);
}

Device setup_device(const TrainOptions& o) {
  check_kernels_flag(o.kernels);
  set_fused_kernels(o.kernels == "fused");
  return setup_device(o.device, o.precision);
}

int set_threads(int threads) {
  S2H_CHECK(threads >= 0, "--threads must be >= 0, got {}", threads);
  if (threads > 0) omp_set_num_threads(threads);
  return omp_get_max_threads();
}

void parse_input_spec(const std::string& spec, models::ModelConfig& cfg) {
  auto number = [&](const std::string& s) {
    S2H_CHECK(!s.empty() && s.size() < 7 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }),
              "--input {}: expected CxHxW (e.g. 3x32x32), HxW or tokensL (e.g. tokens64)", spec);
    const int64_t v = std::stoll(s);
    S2H_CHECK(v > 0, "--input {}: sizes must be positive", spec);
    return v;
  };
  if (spec.rfind("tokens", 0) == 0) {
    cfg.max_len = number(spec.substr(6));
    cfg.in_channels = 0;
    cfg.image_size = 0;
    return;
  }
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t pos; (pos = spec.find('x', start)) != std::string::npos; start = pos + 1)
    parts.push_back(spec.substr(start, pos - start));
  parts.push_back(spec.substr(start));
  S2H_CHECK(parts.size() == 2 || parts.size() == 3, "--input {}: expected CxHxW (e.g. 3x32x32), HxW or tokensL", spec);
  const int64_t c = parts.size() == 3 ? number(parts[0]) : 3;
  const int64_t h = number(parts[parts.size() - 2]), w = number(parts.back());
  S2H_CHECK(h == w, "--input {}: models take square images (H == W)", spec);
  cfg.in_channels = c;
  cfg.image_size = h;
  cfg.max_len = 0;
}

// ------------------------------------------------------------------ shared by train and prune
void require_known_model(const std::string& name) {
  const auto names = models::model_names();
  if (std::find(names.begin(), names.end(), name) == names.end()) models::make_model(name, {});
}

models::ModelConfig model_config(const TrainOptions& o, const DataSplits& data) {
  models::ModelConfig cfg = data.geometry;
  if (o.classes > 0) {
    S2H_CHECK(o.classes >= cfg.num_classes, "--classes {} is fewer than the {} classes of {}", o.classes,
              cfg.num_classes, o.data);
    cfg.num_classes = o.classes;
  }
  cfg.imagenet_stem = o.imagenet_stem;
  cfg.patch_size = o.patch_size;
  S2H_CHECK(models::is_text_model(o.model) == (cfg.vocab_size > 0), "--model {} takes {}, but --data {} is {}",
            o.model, models::is_text_model(o.model) ? "text" : "images", o.data, cfg.vocab_size > 0 ? "text" : "images");
  return cfg;
}

void load_init_weights(Module& model, const std::string& path, const std::string& model_name) {
  const SafetensorsFile f = load_safetensors(path);
  const std::string name = metadata_value(f.metadata, "model", path, "model checkpoint");
  S2H_CHECK(name == model_name, "--init {}: holds a {} model, not --model {}", path, name, model_name);
  S2H_CHECK(!f.metadata.count("architecture"), "--init {}: is already a pruned (narrow) network", path);
  try {
    model.load_state_dict(f.tensors, /*strict=*/true);
  } catch (const Error& e) {
    S2H_FAIL("--init {}: {}", path, e.what());
  }
}

nlohmann::json prune_options_json(const PruneOptions& o) {
  nlohmann::json j = {{"method", o.method},
                      {"init", o.init},
                      {"target_flops", o.target_flops},
                      {"flops_scope", o.flops_scope},
                      {"variant", o.variant},
                      {"ch_divisor", o.ch_divisor},
                      {"head_divisor", o.head_divisor},
                      {"temperature", o.temperature},
                      {"mask_init", o.mask_init},
                      {"lambda_flops", o.lambda_flops},
                      {"lambda_kd", o.lambda_kd},
                      {"flops_tolerance", o.flops_tolerance},
                      {"flops_balance", o.flops_balance},
                      {"task_balance", o.task_balance},
                      {"flops_widths", o.flops_widths},
                      {"mask_lr", o.mask_lr},
                      {"mask_momentum", o.mask_momentum},
                      {"mask_weight_decay", o.mask_weight_decay},
                      {"order_every", o.order_every},
                      {"dense_epochs", o.dense_epochs},
                      {"hard_ft_epochs", o.hard_ft_epochs},
                      {"bn_batches", o.bn_batches},
                      {"budget_tolerance", o.budget_tolerance},
                      {"widths_from", o.widths_from},
                      {"sparsity", o.sparsity},
                      {"sdp_structured", o.sdp_structured},
                      {"sdp_scope", o.sdp_scope},
                      {"sdp_teacher", o.sdp_teacher},
                      {"sdp_repr", o.sdp_repr},
                      {"cc_lambda", o.cc_lambda},
                      {"cc_alpha", o.cc_alpha},
                      {"prune_steps", o.prune_steps},
                      {"sparsity_schedule", o.sparsity_schedule},
                      {"prune_until", o.prune_until}};
  j.update(nlohmann::json(o.train));
  return j;
}

std::string default_out(const TrainOptions& o) {
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
  return fmt::format("runs/{}-{}-{}", o.model, o.data, stamp);
}

DataOptions data_options(const TrainOptions& o) {
  DataOptions d;
  d.name = o.data;
  d.root = o.data_root;
  d.augment = o.augment;
  d.image_size = o.image_size;
  d.max_len = o.max_len;
  d.vocab_size = o.vocab_size;
  d.cache_dir = o.cache_dir;
  d.limit_train = o.limit_train;
  d.limit_test = o.limit_test;
  return d;
}

std::unique_ptr<Optimizer> make_optimizer(const TrainOptions& o, const std::vector<Tensor>& params) {
  if (o.optimizer == "sgd") {
    SGDOptions so;
    so.lr = o.lr;
    so.momentum = o.momentum;
    so.nesterov = o.nesterov && o.momentum > 0;
    so.weight_decay = o.weight_decay;
    return std::make_unique<SGD>(params, so);
  }
  AdamWOptions ao;
  ao.lr = o.lr;
  ao.beta1 = o.momentum > 0 ? o.momentum : 0.9;
  ao.weight_decay = o.weight_decay;
  return std::make_unique<AdamW>(params, ao);
}

LrSchedule make_schedule(const TrainOptions& o, int64_t steps_per_epoch) {
  LrSchedule sched;
  sched.kind = LrSchedule::parse_kind(o.schedule);
  sched.base_lr = o.lr;
  sched.total_steps = steps_per_epoch * o.epochs;
  sched.warmup_steps = static_cast<int64_t>(o.warmup_epochs * static_cast<double>(steps_per_epoch));
  sched.min_lr = o.min_lr;
  sched.step_size = std::max<int64_t>(1, static_cast<int64_t>(o.step_epochs * static_cast<double>(steps_per_epoch)));
  sched.gamma = o.gamma;
  return sched;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int64_t count_correct(const Tensor& logits, const Tensor& labels) {
  const Tensor pred = argmax(logits.detach(), 1).to(Device::cpu());
  const Tensor lab = labels.to(Device::cpu()).contiguous();
  const int64_t n = labels.numel();
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) c += pred.data<int64_t>()[i] == lab.data<int64_t>()[i];
  return c;
}

MetricsLog::MetricsLog(const std::string& path, int64_t keep_bytes) : path_(path) {
  if (keep_bytes >= 0) {
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    S2H_CHECK(!ec, "{}: cannot read the metrics log of the run to resume: {}", path, ec.message());
    S2H_CHECK(static_cast<int64_t>(size) >= keep_bytes,
              "{}: the log has {} bytes, fewer than the {} the checkpoint recorded", path, size, keep_bytes);
    fs::resize_file(path, static_cast<uintmax_t>(keep_bytes), ec);
    S2H_CHECK(!ec, "{}: cannot truncate to the checkpoint: {}", path, ec.message());
    f_.open(path, std::ios::out | std::ios::app);
  } else {
    f_.open(path, std::ios::out | std::ios::trunc);
  }
  S2H_CHECK(f_.good(), "{}: cannot open the metrics log for writing", path);
}

void MetricsLog::write(const nlohmann::json& j) {
  f_ << j.dump() << '\n';
  f_.flush();
  S2H_CHECK(f_.good(), "{}: write failed", path_);
}

}  // namespace s2h::app
