// 2-D convolutions by oneDNN as XLA FFI handlers, for XLA's CPU backend: see digitjax/onednn.py,
// which compiles this file and registers the handlers.
//
// Arrays: x (N, ceil(IC/K), H, W, K), or (N, 1, H, W, 1) for one input channel; y and dy
// (N, ceil(OC/K), OH, OW, K); w and dw HWIO, db (OC,). Channels past IC or OC are zeros. K is the
// channel block of oneDNN's fast kernels on this CPU (DigitjaxConvBlock: 16 with AVX-512, 8 with
// AVX2), read from the arrays' last axis.
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Scratch buffers of the calling thread, kept for its next call: XLA may run two at once.
class Scratch {
 public:
  ~Scratch() {
    for (void* p : bufs_) std::free(p);
  }
  void* Get(size_t slot, size_t bytes) {
    if (slot >= bufs_.size()) bufs_.resize(slot + 1, nullptr), sizes_.resize(slot + 1, 0);
    if (sizes_[slot] < bytes) {
      std::free(bufs_[slot]);
      bufs_[slot] = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
      sizes_[slot] = bytes;
    }
    return bufs_[slot];
  }

 private:
  std::vector<void*> bufs_;
  std::vector<size_t> sizes_;
};
thread_local Scratch scratch;
enum Slot { kScratchpad, kWeights };

struct Shape {
  int64_t n, ic, h, w, oc, kh, kw, pad, block;
  auto Key() const { return std::make_tuple(n, ic, h, w, oc, kh, kw, pad, block); }
};

tag Blocked(int64_t block) { return block == 16 ? tag::nChw16c : tag::nChw8c; }

// The channel block oneDNN's own kernels choose on this CPU (under ONEDNN_MAX_CPU_ISA too): asked
// by letting it pick the layouts of a typical convolution. 0 where it picks a plain layout.
int64_t PreferredBlock() {
  memory::dims strides = {1, 1}, pad = {1, 1};
  auto any = [](memory::dims d) { return memory::desc(d, dt::f32, tag::any); };
  dnnl::convolution_forward::primitive_desc pd(
      {dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, any({8, 32, 14, 14}),
       any({32, 32, 3, 3}), any({8, 32, 14, 14}), strides, pad, pad},
      Engine());
  const auto& blocking = pd.src_desc().data.format_desc.blocking;
  int64_t block = blocking.inner_nblks == 1 ? blocking.inner_blks[0] : 0;
  return block == 8 || block == 16 ? block : 0;
}

// The channel block of the arrays the handlers take on this CPU, asked of oneDNN once; 0 where it
// has no blocked kernels.
int64_t Block() {
  static const int64_t block = [] {
    try {
      return PreferredBlock();
    } catch (const dnnl::error&) {
      return int64_t{0};
    }
  }();
  return block;
}

// The three primitives of one shape, built on first use. Winograd F(4x4, 3x3) where oneDNN has
// it (3x3 kernels, channels in whole blocks; AVX-512 only), else its direct convolution.
// `reference` marks shapes for which oneDNN has only its reference kernels.
struct Conv {
  explicit Conv(const Shape& s) {
    memory::dims strides = {1, 1}, pad = {s.pad, s.pad};
    memory::dim oh = s.h + 2 * s.pad - s.kh + 1, ow = s.w + 2 * s.pad - s.kw + 1;
    src = memory::desc({s.n, s.ic, s.h, s.w}, dt::f32, s.ic == 1 ? tag::nchw : Blocked(s.block));
    dst = memory::desc({s.n, s.oc, oh, ow}, dt::f32, Blocked(s.block));
    hwio = memory::desc({s.oc, s.ic, s.kh, s.kw}, dt::f32, tag::hwio);
    auto weights = memory::desc({s.oc, s.ic, s.kh, s.kw}, dt::f32, tag::any);
    auto bias = memory::desc({s.oc}, dt::f32, tag::x);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    bool winograd = s.kh == 3 && s.kw == 3 && s.ic % s.block == 0 && s.oc % s.block == 0;
    for (auto alg : {dnnl::algorithm::convolution_winograd, dnnl::algorithm::convolution_direct}) {
      if (alg == dnnl::algorithm::convolution_winograd && !winograd) continue;
      try {
        fwd_pd = dnnl::convolution_forward::primitive_desc(
            {dnnl::prop_kind::forward_training, alg, src, weights, dst, strides, pad, pad}, attr, Engine());
        bwd_w_pd = dnnl::convolution_backward_weights::primitive_desc(
            {alg, src, weights, bias, dst, strides, pad, pad}, attr, Engine(), fwd_pd);
        if (s.ic > 1)
          bwd_d_pd = dnnl::convolution_backward_data::primitive_desc({alg, src, weights, dst, strides, pad, pad},
                                                                     attr, Engine(), fwd_pd);
        break;
      } catch (const dnnl::error&) {
        if (alg == dnnl::algorithm::convolution_direct) throw;
      }
    }
    kernels = std::string("forward=") + fwd_pd.impl_info_str() + " weights=" + bwd_w_pd.impl_info_str();
    if (s.ic > 1) kernels += std::string(" data=") + bwd_d_pd.impl_info_str();
    // oneDNN's reference kernels (odd channel counts) are far slower than digitjax's own.
    for (const char* impl : {fwd_pd.impl_info_str(), bwd_w_pd.impl_info_str(),
                             s.ic > 1 ? bwd_d_pd.impl_info_str() : ""})
      reference = reference || std::string(impl).rfind("ref", 0) == 0;
    if (reference) return;
    fwd = dnnl::convolution_forward(fwd_pd);
    bwd_w = dnnl::convolution_backward_weights(bwd_w_pd);
    if (s.ic > 1) bwd_d = dnnl::convolution_backward_data(bwd_d_pd);
    fwd_w = Reorder(hwio, fwd_pd.weights_desc());
    if (s.ic > 1) bwd_d_w = Reorder(hwio, bwd_d_pd.weights_desc());
    bwd_w_w = Reorder(bwd_w_pd.diff_weights_desc(), hwio);
  }
  // Empty where the two layouts are the same.
  static dnnl::reorder Reorder(const memory::desc& from, const memory::desc& to) {
    return from == to ? dnnl::reorder() : dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), from, Engine(), to));
  }
  memory::desc src, dst, hwio;
  std::string kernels;  // the implementations oneDNN picked, by name
  bool reference = false;
  // The weights' reorders: HWIO to the forward's and the input gradient's layouts, and the
  // weight gradient's layout back to HWIO.
  dnnl::reorder fwd_w, bwd_d_w, bwd_w_w;
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc bwd_d_pd;
  dnnl::convolution_backward_weights::primitive_desc bwd_w_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_d;
  dnnl::convolution_backward_weights bwd_w;
};

// nullptr where oneDNN has no convolution at all for this shape.
Conv* Find(const Shape& s) {
  static std::mutex mu;
  static std::map<decltype(s.Key()), std::unique_ptr<Conv>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto [it, inserted] = cache.try_emplace(s.Key());
  if (inserted) {
    try {
      it->second = std::make_unique<Conv>(s);
    } catch (const dnnl::error&) {
    }
  }
  return it->second.get();
}

// nullptr where oneDNN has no fast convolution for this shape.
Conv* Get(const Shape& s) {
  Conv* c = Find(s);
  return c && !c->reference ? c : nullptr;
}

memory Scratchpad(const dnnl::primitive_desc_base& pd) {
  auto md = pd.scratchpad_desc();
  return memory(md, Engine(), scratch.Get(kScratchpad, md.get_size()));
}

// The HWIO weights in the layout `want`, reordered into scratch by `reorder` unless it is empty.
memory Weights(dnnl::stream& stream, const Conv& c, const dnnl::reorder& reorder, const memory::desc& want,
               float* hwio) {
  memory user(c.hwio, Engine(), hwio);
  if (!reorder) return user;
  memory m(want, Engine(), scratch.Get(kWeights, want.get_size()));
  reorder.execute(stream, user, m);
  return m;
}

using Dims = ffi::Buffer<ffi::F32>::Dimensions;

template <typename F>
ffi::Error Run(Dims x, Dims w, int64_t pad, F f) {
  if (x.size() != 5 || w.size() != 4) return ffi::Error::InvalidArgument("oneDNN convolution: bad ranks");
  int64_t block = Block();
  if (w[2] > 1 && x[4] != block) return ffi::Error::InvalidArgument("oneDNN convolution: wrong channel block");
  Conv* c = Get(Shape{x[0], w[2], x[2], x[3], w[3], w[0], w[1], pad, block});
  if (!c) return ffi::Error::InvalidArgument("oneDNN has no convolution for this shape");
  try {
    dnnl::stream stream(Engine());
    f(*c, stream);
    stream.wait();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN convolution: ") + e.what());
  }
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y, int64_t pad) {
  return Run(x.dimensions(), w.dimensions(), pad, [&](Conv& c, dnnl::stream& stream) {
    c.fwd.execute(stream, {{DNNL_ARG_SRC, memory(c.src, Engine(), x.typed_data())},
                           {DNNL_ARG_WEIGHTS, Weights(stream, c, c.fwd_w, c.fwd_pd.weights_desc(), w.typed_data())},
                           {DNNL_ARG_DST, memory(c.dst, Engine(), y->typed_data())},
                           {DNNL_ARG_SCRATCHPAD, Scratchpad(c.fwd_pd)}});
  });
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> dy,
                        ffi::ResultBuffer<ffi::F32> dx, int64_t pad) {
  return Run(x.dimensions(), w.dimensions(), pad, [&](Conv& c, dnnl::stream& stream) {
    if (!c.bwd_d) throw dnnl::error(dnnl_invalid_arguments, "no input gradient for one input channel");
    c.bwd_d.execute(stream, {{DNNL_ARG_DIFF_DST, memory(c.dst, Engine(), dy.typed_data())},
                             {DNNL_ARG_WEIGHTS, Weights(stream, c, c.bwd_d_w, c.bwd_d_pd.weights_desc(), w.typed_data())},
                             {DNNL_ARG_DIFF_SRC, memory(c.src, Engine(), dx->typed_data())},
                             {DNNL_ARG_SCRATCHPAD, Scratchpad(c.bwd_d_pd)}});
  });
}

ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> dy,
                           ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> db, int64_t pad) {
  return Run(x.dimensions(), w.dimensions(), pad, [&](Conv& c, dnnl::stream& stream) {
    auto want = c.bwd_w_pd.diff_weights_desc();
    memory user(c.hwio, Engine(), dw->typed_data());
    memory m = c.bwd_w_w ? memory(want, Engine(), scratch.Get(kWeights, want.get_size())) : user;
    c.bwd_w.execute(stream, {{DNNL_ARG_SRC, memory(c.src, Engine(), x.typed_data())},
                             {DNNL_ARG_DIFF_DST, memory(c.dst, Engine(), dy.typed_data())},
                             {DNNL_ARG_DIFF_WEIGHTS, m},
                             {DNNL_ARG_DIFF_BIAS, memory(c.bwd_w_pd.diff_bias_desc(), Engine(), db->typed_data())},
                             {DNNL_ARG_SCRATCHPAD, Scratchpad(c.bwd_w_pd)}});
    if (c.bwd_w_w) c.bwd_w_w.execute(stream, m, user);
  });
}

}  // namespace

// The channel block of the arrays the handlers take on this CPU; 0 where oneDNN has no blocked kernels.
extern "C" int64_t DigitjaxConvBlock() { return Block(); }

// Writes the names of the kernels oneDNN picks for this shape into `out` (empty where it has
// none); returns whether they are fast ones (not its reference kernels). Asked once per shape.
extern "C" int DigitjaxConvKernels(int64_t n, int64_t ic, int64_t h, int64_t w, int64_t oc, int64_t kh, int64_t kw,
                                   int64_t pad, char* out, int64_t size) {
  int64_t block = Block();
  Conv* c = block ? Find(Shape{n, ic, h, w, oc, kh, kw, pad, block}) : nullptr;
  std::string kernels = c ? c->kernels : "";
  if (size > 0) out[kernels.copy(out, size - 1)] = '\0';
  return c && !c->reference;
}

#define ARG .Arg<ffi::Buffer<ffi::F32>>()
#define RET .Ret<ffi::Buffer<ffi::F32>>()
XLA_FFI_DEFINE_HANDLER_SYMBOL(DigitjaxConvForward, Forward, ffi::Ffi::Bind() ARG ARG RET.Attr<int64_t>("pad"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(DigitjaxConvBackwardData, BackwardData,
                              ffi::Ffi::Bind() ARG ARG ARG RET.Attr<int64_t>("pad"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(DigitjaxConvBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind() ARG ARG ARG RET RET.Attr<int64_t>("pad"));
