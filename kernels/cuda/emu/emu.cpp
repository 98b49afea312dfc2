// The emulator's runtime (see emu.h): fibers, the block scheduler, barriers,
// warp collectives, per-block shared memory, cp.async queues, the tensor-core
// instructions, launch checks and fault reports.
#include "kernels/cuda/emu/emu.h"

#include <dlfcn.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <vector>

#ifdef S2H_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#ifdef S2H_EMU_ASAN
// A failed launch abandons its fibers mid-kernel: their stacks hold heap
// objects (the error's strings) that are never destroyed. Leak checking is
// therefore off in the emulator's ASan builds (ASAN_OPTIONS can turn it on).
extern "C" const char* __asan_default_options() { return "detect_leaks=0"; }
#endif

namespace s2h::emu {

namespace detail {
thread_local uint3 t_thread_idx, t_block_idx;
thread_local dim3 t_block_dim, t_grid_dim;
}  // namespace detail

namespace {

using detail::LaunchSpec;
using detail::Site;
using detail::WarpCall;

// ------------------------------------------------------------------ H100 limits
constexpr unsigned kMaxThreads = 1024, kMaxBlockX = 1024, kMaxBlockY = 1024, kMaxBlockZ = 64;
constexpr unsigned long long kMaxGridX = 2147483647ull, kMaxGridYZ = 65535;
constexpr size_t kStaticSmemLimit = 48 * 1024;  // static shared memory, and dynamic without opt-in
constexpr size_t kOptInSmemLimit = 227 * 1024;  // static + dynamic after cudaFuncSetAttribute
constexpr size_t kParamLimit = 32764;           // kernel parameters (CUDA 12.1+, Volta+)
constexpr int kMaxSharedVars = 16;              // distinct shared variables per block (emulator limit)
constexpr unsigned char kPoison = 0xff;

size_t page_size() {
  static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return p;
}
size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

std::string coords(const uint3& v) {
  char b[48];
  std::snprintf(b, sizeof b, "(%u,%u,%u)", v.x, v.y, v.z);
  return b;
}
std::string site_text(const Site& s) { return std::string(s.file) + ":" + std::to_string(s.line); }
std::string hex(unsigned v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

// ------------------------------------------------------------------ options and stats
std::mutex g_mutex;  // the schedule and the kernels' attributes
bool g_schedule_set = false;
Schedule g_schedule;
std::map<const void*, int> g_max_dynamic;  // kernel -> cudaFuncAttributeMaxDynamicSharedMemorySize

struct AtomicStats {
  std::atomic<uint64_t> launches{0}, blocks{0}, threads{0}, barriers{0}, warp_ops{0}, switches{0};
} g_stats;

// S2H_EMU_KERNELS=DIR: at exit, DIR/<pid>.tsv lists every kernel this process
// launched (launches, launch name, the binary holding it and the kernel's
// offset in it, for addr2line) after a first line with the command line;
// tests/emu_kernel_coverage.py reads these files.
struct KernelUse {
  std::string name;
  uint64_t launches = 0;
};
std::map<const void*, KernelUse> g_kernels;  // under g_mutex
const char* kernels_dir() {
  static const char* d = std::getenv("S2H_EMU_KERNELS");
  return d && *d ? d : nullptr;
}
void write_kernel_report() {
  std::error_code ec;
  std::filesystem::create_directories(kernels_dir(), ec);  // a failure shows at the fopen
  const std::string path = std::string(kernels_dir()) + "/" + std::to_string(getpid()) + ".tsv";
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) {
    std::fprintf(stderr, "s2h emulator: cannot write %s\n", path.c_str());
    return;
  }
  std::fputs("# cmdline", f);
  if (FILE* c = std::fopen("/proc/self/cmdline", "rb")) {
    std::string arg;
    for (int ch; (ch = std::fgetc(c)) != EOF;) {
      if (ch) {
        arg += static_cast<char>(ch);
        continue;
      }
      std::fprintf(f, "\t%s", arg.c_str());
      arg.clear();
    }
    std::fclose(c);
  }
  std::fputc('\n', f);
  std::lock_guard<std::mutex> lock(g_mutex);
  for (const auto& [kernel, use] : g_kernels) {
    Dl_info info{};
    const bool found = dladdr(kernel, &info) != 0 && info.dli_fname;
    std::fprintf(f, "%llu\t%s\t%s\t0x%llx\n", static_cast<unsigned long long>(use.launches), use.name.c_str(),
                 found ? info.dli_fname : "?",
                 static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(kernel) -
                                                 (found ? reinterpret_cast<uintptr_t>(info.dli_fbase) : 0)));
  }
  std::fclose(f);
}
const bool g_kernel_report = kernels_dir() != nullptr && std::atexit(write_kernel_report) == 0;

Schedule parse_schedule(const char* s) {
  Schedule r;
  if (s == nullptr || *s == 0) return r;
  const std::string v(s);
  if (v == "forward") return r;
  if (v == "reverse") {
    r.order = Order::Reverse;
    return r;
  }
  if (v.rfind("shuffle", 0) == 0) {
    r.order = Order::Shuffle;
    r.seed = 1;
    if (v.size() > 8 && v[7] == ':')
      r.seed = std::strtoull(v.c_str() + 8, nullptr, 10);
    else if (v.size() != 7)
      throw EmuError("S2H_EMU_ORDER=" + v + ": expected forward, reverse, shuffle or shuffle:SEED");
    return r;
  }
  throw EmuError("S2H_EMU_ORDER=" + v + ": expected forward, reverse, shuffle or shuffle:SEED");
}

// ------------------------------------------------------------------ contexts
#if defined(__x86_64__)
// Saves the callee-saved registers, the x87 control word and MXCSR on the
// current stack, stores the stack pointer in *from and continues on `to`.
extern "C" void s2h_emu_switch(void** from, void* to);
extern "C" void s2h_emu_trampoline();
asm(R"(
.text
.globl s2h_emu_switch
.type s2h_emu_switch,@function
s2h_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr 8(%rsp)
  fldcw (%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size s2h_emu_switch,.-s2h_emu_switch
.globl s2h_emu_trampoline
.type s2h_emu_trampoline,@function
s2h_emu_trampoline:
  movq %r12, %rdi
  callq *%r13
  ud2
.size s2h_emu_trampoline,.-s2h_emu_trampoline
)");

struct Context {
  void* sp = nullptr;
};
// A context that calls fn(arg) on the stack [base, base + size) when first switched to.
void make_context(Context& c, char* base, size_t size, void (*fn)(void*), void* arg) {
  auto* top = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(base + size)) & ~uintptr_t{15});
  uint64_t* sp = top;
  *--sp = reinterpret_cast<uint64_t>(&s2h_emu_trampoline);  // return address of the first switch
  *--sp = 0;                                                // rbp
  *--sp = 0;                                                // rbx
  *--sp = reinterpret_cast<uint64_t>(arg);                  // r12
  *--sp = reinterpret_cast<uint64_t>(fn);                   // r13
  *--sp = 0;                                                // r14
  *--sp = 0;                                                // r15
  // [sp + 8]: MXCSR, [sp]: x87 control word, both as the scheduler has them (rounding, flush-to-zero).
  uint32_t mxcsr;
  uint16_t cw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(cw));
  *--sp = mxcsr;
  *--sp = cw;
  c.sp = sp;
}
void raw_switch(Context& from, Context& to) { s2h_emu_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};
void make_context(Context& c, char* base, size_t size, void (*fn)(void*), void* arg) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = base;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, reinterpret_cast<void (*)()>(fn), 1, arg);  // pointer-sized argument on LP64
}
void raw_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// ------------------------------------------------------------------ per-thread state
struct Copy {  // one cp.async
  void* dst;
  const void* src;
  int bytes;
  int group;
};

enum class State : uint8_t { Runnable, Barrier, Warp, Exited, Failed };

struct Fiber {
  Context ctx;
  char* stack = nullptr;
  size_t stack_size = 0;
  uint3 idx;
  int tid = 0;
  State state = State::Runnable;
  Site site;              // where it waits (barrier or warp call)
  int* result = nullptr;  // __syncthreads_or/and/count
  const WarpCall* call = nullptr;
  std::vector<Copy> copies;  // cp.async in flight: copies[head..) are pending
  size_t head = 0;
  int committed = 0;
};

struct SharedVar {
  const void* key;  // null for the dynamic one
  char* ptr;
  size_t bytes;
  char* slot_end;  // the slack [ptr + bytes, slot_end) must stay poisoned
  const char* name;
};

struct Block {
  const LaunchSpec* spec = nullptr;
  uint3 idx;
  int nthreads = 0, live = 0, exited = 0, at_barrier = 0, first_exited = -1;
  Site barrier_site;
  int bar_mode = 0, bar_or = 0, bar_and = 1, bar_count = 0;
  bool failed = false;
  std::string error;
  std::vector<SharedVar> vars;
  size_t static_bytes = 0;
  size_t smem_limit = kStaticSmemLimit;  // static + dynamic
};

struct Worker;
thread_local Worker* t_worker = nullptr;

// A guarded region of memory: usable pages with a PROT_NONE page below (stacks) or after (shared slots).
char* map_region(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw EmuError("emulator: cannot map " + std::to_string(bytes >> 10) + " KiB");
  return static_cast<char*>(p);
}
void protect(char* p, size_t bytes) {
  if (mprotect(p, bytes, PROT_NONE) != 0) throw EmuError("emulator: mprotect failed");
}

size_t stack_bytes() {
  static const size_t kb = [] {
    const char* s = std::getenv("S2H_EMU_STACK_KB");
#ifdef S2H_EMU_ASAN
    size_t v = 512;
#else
    size_t v = 256;
#endif
    if (s && *s) v = std::max<size_t>(64, std::strtoull(s, nullptr, 10));
    return v;
  }();
  return round_up(kb << 10, page_size());
}

struct Worker {
  Context sched;
  const void* sched_stack = nullptr;  // the OS thread's stack, for ASan's fiber switches
  size_t sched_stack_size = 0;
  Block* block = nullptr;
  Fiber* cur = nullptr;
  std::vector<Fiber> fibers;
  std::vector<int> order;               // the threads of a block in this phase's order
  bool by_warps = false;                // whole warps take turns (see run_pass)
  std::vector<std::vector<int>> warps;  // then: each warp's threads, in order
  std::mt19937_64 rng;
  // fiber stacks: [guard page][stack] each
  std::vector<char*> stack_regions;
  // shared memory: kMaxSharedVars slots of [data][guard page]
  char* arena = nullptr;
  size_t slot_data = 0, slot_stride = 0;
  int slots_used = 0;
  // fault recovery (SIGSEGV / SIGBUS inside a fiber)
  sigjmp_buf fault_env;
  volatile sig_atomic_t in_fiber = 0;
  char fault_msg[512] = {};
  char* altstack = nullptr;

  Worker() {
    slot_data = round_up(kOptInSmemLimit, page_size());
    slot_stride = slot_data + page_size();
    arena = map_region(slot_stride * kMaxSharedVars);
    for (int i = 0; i < kMaxSharedVars; ++i) protect(arena + i * slot_stride + slot_data, page_size());
  }
  ~Worker() {
    munmap(arena, slot_stride * kMaxSharedVars);
    for (char* r : stack_regions) munmap(r, stack_bytes() + page_size());
    if (altstack) {
      stack_t ss{};
      ss.ss_flags = SS_DISABLE;
      sigaltstack(&ss, nullptr);
      munmap(altstack, 64 * 1024);
    }
  }
  void ensure_stacks(int n) {
    while (static_cast<int>(stack_regions.size()) < n) {
      char* r = map_region(stack_bytes() + page_size());
      protect(r, page_size());
      stack_regions.push_back(r);
    }
  }
  char* slot_begin(int i) const { return arena + i * slot_stride; }
};

Worker& worker() {
  thread_local Worker w;
  t_worker = &w;
  return w;
}

// ------------------------------------------------------------------ faults
#ifndef S2H_EMU_ASAN  // AddressSanitizer reports faults itself
struct sigaction g_prev_segv, g_prev_bus;

// The shared variable or fiber stack whose guard page holds `addr`, as text.
void describe_fault(Worker& w, const void* addr, char* out, size_t n) {
  const char* a = static_cast<const char*>(addr);
  const size_t page = page_size();
  if (w.block) {
    for (const SharedVar& v : w.block->vars) {
      if (a >= v.slot_end && a < v.slot_end + page) {
        std::snprintf(out, n, "access %zu bytes past the end of shared variable `%s` (%zu bytes)",
                      static_cast<size_t>(a - (v.ptr + v.bytes)), v.name, v.bytes);
        return;
      }
    }
  }
  for (int i = 0; i < kMaxSharedVars; ++i) {
    const char* g = w.slot_begin(i) + w.slot_data;
    if (a >= g && a < g + page) {
      std::snprintf(out, n, "access past the end of a shared-memory variable (guard page of slot %d)", i);
      return;
    }
  }
  for (char* r : w.stack_regions)
    if (a >= r && a < r + page) {
      std::snprintf(out, n, "fiber stack overflow (the stacks hold %zu KiB; S2H_EMU_STACK_KB sets more)",
                    stack_bytes() >> 10);
      return;
    }
  std::snprintf(out, n, "invalid memory access at address %p", addr);
}

void on_fault(int sig, siginfo_t* info, void* uctx) {
  Worker* w = t_worker;
  if (w && w->in_fiber) {
    describe_fault(*w, info->si_addr, w->fault_msg, sizeof w->fault_msg);
    w->in_fiber = 0;
    siglongjmp(w->fault_env, 1);
  }
  // Not ours: the previous disposition.
  const struct sigaction& prev = sig == SIGSEGV ? g_prev_segv : g_prev_bus;
  if (prev.sa_flags & SA_SIGINFO) {
    if (prev.sa_sigaction) {
      prev.sa_sigaction(sig, info, uctx);
      return;
    }
  } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
    prev.sa_handler(sig);
    return;
  }
  signal(sig, SIG_DFL);  // re-executing the access now crashes as it would have
}

void install_fault_handler(Worker& w) {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_prev_segv);
    sigaction(SIGBUS, &sa, &g_prev_bus);
  });
  if (!w.altstack) {  // the handler must run off the fiber stacks (one of them may be what overflowed)
    w.altstack = map_region(64 * 1024);
    stack_t ss{};
    ss.ss_sp = w.altstack;
    ss.ss_size = 64 * 1024;
    sigaltstack(&ss, nullptr);
  }
}
#else
void install_fault_handler(Worker&) {}
#endif

// ------------------------------------------------------------------ switching
void switch_to_fiber(Worker& w, Fiber& f) {
  w.cur = &f;
  detail::t_thread_idx = f.idx;
  g_stats.switches.fetch_add(1, std::memory_order_relaxed);
#ifdef S2H_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, f.stack_size);
  w.in_fiber = 1;
  raw_switch(w.sched, f.ctx);
  w.in_fiber = 0;
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  w.in_fiber = 1;
  raw_switch(w.sched, f.ctx);
  w.in_fiber = 0;
#endif
  w.cur = nullptr;
}

// From the running fiber back to the scheduler; `final` when the fiber never runs again.
void switch_to_scheduler(Worker& w, Fiber& f, bool final) {
#ifdef S2H_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(final ? nullptr : &fake, w.sched_stack, w.sched_stack_size);
  raw_switch(f.ctx, w.sched);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void) final;
  raw_switch(f.ctx, w.sched);
#endif
}

Fiber& current_fiber(const char* what) {
  Worker* w = t_worker;
  if (!w || !w->cur) throw EmuError(std::string(what) + " was called outside a kernel");
  return *w->cur;
}

std::string where(const Worker& w, const Fiber* f) {
  std::string s = "kernel " + std::string(w.block->spec->name) + ", block " + coords(w.block->idx);
  if (f) s += ", thread " + coords(f->idx);
  return s;
}

// Ends the running fiber with an error (or throws outside a fiber).
[[noreturn]] void fail_here(const std::string& what) {
  Worker* w = t_worker;
  if (!w || !w->block) throw EmuError("emulator: " + what);
  Block& b = *w->block;
  if (!b.failed) {
    b.failed = true;
    b.error = where(*w, w->cur) + ": " + what;
  }
  if (!w->cur) throw EmuError(b.error);
  Fiber& f = *w->cur;
  f.state = State::Failed;
  switch_to_scheduler(*w, f, true);
  std::abort();  // never resumed
}

void fiber_main(void* p) {
  Fiber& f = *static_cast<Fiber*>(p);
  Worker& w = *t_worker;
#ifdef S2H_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &w.sched_stack, &w.sched_stack_size);
#endif
  Block& b = *w.block;
  try {
    b.spec->entry(b.spec->ctx);
  } catch (const std::exception& e) {
    fail_here(std::string("the kernel threw: ") + e.what());
  } catch (...) {
    fail_here("the kernel threw");
  }
  if (f.head < f.copies.size())
    fail_here("the thread exits with " + std::to_string(f.copies.size() - f.head) +
              " cp.async copies that no cp.async.wait_group covered (their data never lands)");
  f.state = State::Exited;
  --b.live;
  ++b.exited;
  if (b.first_exited < 0) b.first_exited = f.tid;
  if (b.at_barrier > 0)
    fail_here("the thread exits while " + std::to_string(b.at_barrier) + " threads wait at __syncthreads (" +
              site_text(b.barrier_site) + ")");
  // A lane of this warp waiting for this one in a collective never gets it.
  const int warp = f.tid / 32, lane = f.tid % 32;
  for (int l = 0; l < 32; ++l) {
    const int t = warp * 32 + l;
    if (t >= b.nthreads) break;
    const Fiber& g = w.fibers[static_cast<size_t>(t)];
    if (g.state == State::Warp && (g.call->mask >> lane & 1u))
      fail_here("the thread (lane " + std::to_string(lane) + ") exits while lane " + std::to_string(l) +
                " waits for it in " + g.call->kind + " (" + site_text(g.site) + ")");
  }
  switch_to_scheduler(w, f, true);
  std::abort();
}

// ------------------------------------------------------------------ shared memory
#ifdef S2H_EMU_ASAN
void fence_slot(Worker& w, int slot, char* live, size_t bytes) {
  char* b = w.slot_begin(slot);
  ASAN_POISON_MEMORY_REGION(b, w.slot_data);
  ASAN_UNPOISON_MEMORY_REGION(live, bytes);
}
#endif

char* alloc_slot(Worker& w, size_t bytes, size_t align, char** slot_end) {
  align = std::max<size_t>(align, 8);  // whole ASan granules; CUDA aligns shared variables at least as much
  if (w.slots_used == kMaxSharedVars)
    fail_here("more than " + std::to_string(kMaxSharedVars) + " shared-memory variables in one block");
  const int slot = w.slots_used++;
  char* end = w.slot_begin(slot) + w.slot_data;
  char* p = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(end) - bytes) & ~(uintptr_t{align} - 1));
#ifdef S2H_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(w.slot_begin(slot), w.slot_data);  // the slot's earlier fences
  std::memset(p, kPoison, static_cast<size_t>(end - p));
  fence_slot(w, slot, p, bytes);
#else
  std::memset(p, kPoison, static_cast<size_t>(end - p));
#endif
  *slot_end = end;
  return p;
}

void check_smem_total(Block& b, const char* name) {
  size_t dynamic = 0;
  for (const SharedVar& v : b.vars)
    if (!v.key) dynamic = v.bytes;
  if (b.static_bytes > kStaticSmemLimit)
    fail_here("static shared memory reaches " + std::to_string(b.static_bytes) + " bytes with `" + name +
              "` (the limit is 48 KB)");
  if (b.static_bytes + dynamic > b.smem_limit)
    fail_here("shared memory reaches " + std::to_string(b.static_bytes + dynamic) + " bytes (static " +
              std::to_string(b.static_bytes) + " + dynamic " + std::to_string(dynamic) + ") with `" + name +
              "`; the limit is " + std::to_string(b.smem_limit) +
              (b.smem_limit == kStaticSmemLimit
                   ? " (48 KB: raise it with cudaFuncSetAttribute(MaxDynamicSharedMemorySize))"
                   : " (the cudaFuncAttributeMaxDynamicSharedMemorySize opt-in, at most 227 KB)"));
}

}  // namespace

// ------------------------------------------------------------------ public: schedule, stats
Schedule schedule() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_schedule_set) {
    g_schedule = parse_schedule(std::getenv("S2H_EMU_ORDER"));
    g_schedule_set = true;
  }
  return g_schedule;
}
void set_schedule(const Schedule& s) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_schedule = s;
  g_schedule_set = true;
}
std::string schedule_name(const Schedule& s) {
  switch (s.order) {
    case Order::Forward:
      return "forward";
    case Order::Reverse:
      return "reverse";
    case Order::Shuffle:
      return "shuffle:" + std::to_string(s.seed);
  }
  return "?";
}
Stats stats() {
  Stats s;
  s.launches = g_stats.launches.load();
  s.blocks = g_stats.blocks.load();
  s.threads = g_stats.threads.load();
  s.barriers = g_stats.barriers.load();
  s.warp_ops = g_stats.warp_ops.load();
  s.switches = g_stats.switches.load();
  return s;
}

namespace detail {

void fail(const std::string& what) { fail_here(what); }

// ------------------------------------------------------------------ barriers
void barrier(Site site, int pred, int* result, int mode) {
  Fiber& f = current_fiber("__syncthreads");
  Worker& w = *t_worker;
  Block& b = *w.block;
  if (b.exited > 0)
    fail_here("__syncthreads (" + site_text(site) + ") while thread " +
              coords(w.fibers[static_cast<size_t>(b.first_exited)].idx) + " (and " + std::to_string(b.exited - 1) +
              " more) of the block has exited: the barrier can never complete");
  if (b.at_barrier == 0) {
    b.barrier_site = site;
    b.bar_mode = mode;
    b.bar_or = 0;
    b.bar_and = 1;
    b.bar_count = 0;
  } else if (!(site == b.barrier_site)) {
    fail_here("divergent barriers: this thread waits at " + site_text(site) + " while " + std::to_string(b.at_barrier) +
              " threads wait at " + site_text(b.barrier_site));
  }
  ++b.at_barrier;
  b.bar_or |= pred != 0;
  b.bar_and &= pred != 0;
  b.bar_count += pred != 0;
  f.state = State::Barrier;
  f.site = site;
  f.result = result;
  switch_to_scheduler(w, f, false);
}

// ------------------------------------------------------------------ warp collectives
void warp_call(const WarpCall& call) {
  Fiber& f = current_fiber(call.kind);
  Worker& w = *t_worker;
  Block& b = *w.block;
  const int warp = f.tid / 32, lane = f.tid % 32, base = warp * 32;
  const int width = std::min(32, b.nthreads - base);
  if (!(call.mask >> lane & 1u))
    fail_here(std::string(call.kind) + " (" + site_text(call.site) + "): the calling lane " + std::to_string(lane) +
              " is not in its mask " + hex(call.mask));
  if (width < 32 && (call.mask >> width) != 0)
    fail_here(std::string(call.kind) + " (" + site_text(call.site) + "): the mask " + hex(call.mask) +
              " names lanes that do not exist (this warp has " + std::to_string(width) + " threads)");
  g_stats.warp_ops.fetch_add(1, std::memory_order_relaxed);
  f.call = &call;
  f.site = call.site;
  f.state = State::Warp;
  const WarpCall* lanes[32] = {};
  for (int l = 0; l < 32; ++l) {
    if (!(call.mask >> l & 1u)) continue;
    Fiber& g = w.fibers[static_cast<size_t>(base + l)];
    if (g.state == State::Exited)
      fail_here(std::string(call.kind) + " (" + site_text(call.site) + "): lane " + std::to_string(l) +
                " of the mask has exited");
    if (g.state != State::Warp) {  // not here yet
      switch_to_scheduler(w, f, false);
      return;  // the last lane to arrive did the work
    }
    const WarpCall& o = *g.call;
    if (std::strcmp(o.kind, call.kind) != 0 || o.mask != call.mask || !(o.site == call.site)) {
      if (o.mask >> lane & 1u)  // it waits for this lane elsewhere: neither call can complete
        fail_here("divergent warp collectives: lane " + std::to_string(lane) + " is at " + call.kind + " (" +
                  site_text(call.site) + ", mask " + hex(call.mask) + ") while lane " + std::to_string(l) +
                  " waits at " + o.kind + " (" + site_text(o.site) + ", mask " + hex(o.mask) + ")");
      switch_to_scheduler(w, f, false);  // its call may complete first, then it comes here
      return;
    }
    lanes[l] = g.call;
  }
  call.run(lanes, call.ctx);
  for (int l = 0; l < 32; ++l) {
    if (!(call.mask >> l & 1u)) continue;
    Fiber& g = w.fibers[static_cast<size_t>(base + l)];
    g.state = State::Runnable;
    g.call = nullptr;
  }
}

int vote(const char* kind, unsigned mask, int pred, Site site, int mode) {
  struct Post {
    int pred;
    int out;
  } post{pred != 0, 0};
  WarpCall c;
  c.kind = kind;
  c.mask = mask;
  c.site = site;
  c.in = &post;
  c.out = &post.out;
  static const int modes[3] = {0, 1, 2};
  c.ctx = &modes[mode];
  c.run = [](const WarpCall* const(&lanes)[32], const void* m) {
    unsigned bits = 0, members = 0;
    for (int l = 0; l < 32; ++l) {
      if (!lanes[l]) continue;
      members |= 1u << l;
      if (static_cast<const Post*>(lanes[l]->in)->pred) bits |= 1u << l;
    }
    const int mode_ = *static_cast<const int*>(m);
    const int r = mode_ == 0 ? static_cast<int>(bits) : (mode_ == 1 ? bits != 0 : bits == members);
    for (int l = 0; l < 32; ++l)
      if (lanes[l]) *static_cast<int*>(lanes[l]->out) = r;
  };
  warp_call(c);
  return post.out;
}

// ------------------------------------------------------------------ shared memory
void* shared_var(const void* key, size_t bytes, size_t align, const char* name) {
  current_fiber("shared memory");
  Worker& w = *t_worker;
  Block& b = *w.block;
  for (const SharedVar& v : b.vars)
    if (v.key == key) return v.ptr;
  SharedVar v{key, nullptr, bytes, nullptr, name};
  v.ptr = alloc_slot(w, bytes, align, &v.slot_end);
  b.vars.push_back(v);
  b.static_bytes += round_up(bytes, align);
  check_smem_total(b, name);
  return v.ptr;
}

void* dynamic_shared(size_t align, const char* name) {
  current_fiber("dynamic shared memory");
  Worker& w = *t_worker;
  Block& b = *w.block;
  for (const SharedVar& v : b.vars)
    if (!v.key) return v.ptr;
  SharedVar v{nullptr, nullptr, b.spec->dynamic_smem, nullptr, name};
  v.ptr = alloc_slot(w, v.bytes, std::max<size_t>(align, 16), &v.slot_end);
  b.vars.push_back(v);
  check_smem_total(b, name);
  return v.ptr;
}

bool is_shared(const void* p, size_t bytes) {
  Worker* w = t_worker;
  if (!w || !w->block) return false;
  const char* c = static_cast<const char*>(p);
  for (const SharedVar& v : w->block->vars)
    if (c >= v.ptr && c + bytes <= v.ptr + v.bytes) return true;
  return false;
}

int set_max_dynamic_smem(const void* kernel, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kOptInSmemLimit) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(g_mutex);
  g_max_dynamic[kernel] = bytes;
  return cudaSuccess;
}

// ------------------------------------------------------------------ the grid
namespace {

// The order of the next barrier phase: w.order (threads) and, when whole
// warps take turns, w.warps (each warp's threads in w.order's sequence, the
// warps in the order of their first thread there). Forward: warps; reverse:
// threads; shuffle: a fresh permutation and either.
void fill_order(Worker& w, int n, const Schedule& sch, bool fresh) {
  if (fresh) {
    w.order.resize(static_cast<size_t>(n));
    std::iota(w.order.begin(), w.order.end(), 0);
    if (sch.order == Order::Reverse) std::reverse(w.order.begin(), w.order.end());
  }
  if (sch.order == Order::Shuffle) std::shuffle(w.order.begin(), w.order.end(), w.rng);
  w.by_warps = sch.order == Order::Forward || (sch.order == Order::Shuffle && (w.rng() & 1));
  if (!w.by_warps) return;
  const int nwarps = (n + 31) / 32;
  w.warps.assign(static_cast<size_t>(nwarps), {});
  std::vector<int> first(static_cast<size_t>(nwarps), -1);
  for (size_t k = 0; k < w.order.size(); ++k) {
    const int t = w.order[k], wi = t / 32;
    if (first[static_cast<size_t>(wi)] < 0) first[static_cast<size_t>(wi)] = static_cast<int>(k);
    w.warps[static_cast<size_t>(wi)].push_back(t);
  }
  std::sort(w.warps.begin(), w.warps.end(), [&](const std::vector<int>& a, const std::vector<int>& b) {
    return first[static_cast<size_t>(a[0] / 32)] < first[static_cast<size_t>(b[0] / 32)];
  });
}

// One pass over the block: every runnable fiber runs until it blocks. Threads
// take turns (each runs to its next barrier or warp collective), or whole
// warps do (a warp's threads run until none of them can go on: the warp gets
// as far ahead of the others as its barriers let it). False when none could run.
bool run_pass(Worker& w, Block& b) {
  bool ran = false;
  auto run = [&](int t) {
    Fiber& f = w.fibers[static_cast<size_t>(t)];
    if (f.state != State::Runnable) return false;
    switch_to_fiber(w, f);
    ran = true;
    return true;
  };
  if (!w.by_warps) {
    for (int t : w.order) {
      run(t);
      if (b.failed) return ran;
    }
    return ran;
  }
  for (const std::vector<int>& lanes : w.warps) {
    for (bool again = true; again;) {
      again = false;
      for (int t : lanes) {
        again |= run(t);
        if (b.failed) return ran;
      }
    }
  }
  return ran;
}

std::string deadlock_report(const Worker& w) {
  const Block& b = *w.block;
  std::map<std::string, std::pair<int, std::string>> groups;  // state -> (count, first thread)
  for (int t = 0; t < b.nthreads; ++t) {
    const Fiber& f = w.fibers[static_cast<size_t>(t)];
    std::string key;
    if (f.state == State::Barrier)
      key = "__syncthreads at " + site_text(f.site);
    else if (f.state == State::Warp)
      key = std::string(f.call->kind) + " at " + site_text(f.site) + " (warp " + std::to_string(t / 32) + ", mask " +
            hex(f.call->mask) + ")";
    else
      continue;
    auto& g = groups[key];
    if (g.first == 0) g.second = coords(f.idx);
    ++g.first;
  }
  std::string s = "deadlock: no thread can run;";
  for (const auto& [k, v] : groups) {
    char n[64];
    std::snprintf(n, sizeof n, " %d thread%s (first ", v.first, v.first == 1 ? "" : "s");
    s += n;
    s += v.second;
    s += ") wait at ";
    s += k;
    s += ';';
  }
  return s;
}

// The first byte of the slack behind a shared variable (its alignment padding
// before the guard page) that no longer holds poison, or null. Under ASan the
// slack is fenced, so this reads around the sanitizer.
#ifdef S2H_EMU_ASAN
__attribute__((no_sanitize("address")))
#endif
const char*
overwritten_slack(const SharedVar& v) {
  for (const char* p = v.ptr + v.bytes; p < v.slot_end; ++p)
    if (static_cast<unsigned char>(*p) != kPoison) return p;
  return nullptr;
}

void run_block(Worker& w, Block& b, const Schedule& sch) {
  const LaunchSpec& s = *b.spec;
  const int n = b.nthreads;
  w.slots_used = 0;
  for (int t = 0; t < n; ++t) {
    Fiber& f = w.fibers[static_cast<size_t>(t)];
    f.tid = t;
    f.idx = uint3{static_cast<unsigned>(t) % s.block.x, (static_cast<unsigned>(t) / s.block.x) % s.block.y,
                  static_cast<unsigned>(t) / (s.block.x * s.block.y)};
    f.state = State::Runnable;
    f.call = nullptr;
    f.result = nullptr;
    f.copies.clear();
    f.head = 0;
    f.committed = 0;
    f.stack = w.stack_regions[static_cast<size_t>(t)] + page_size();
    f.stack_size = stack_bytes();
#ifdef S2H_EMU_ASAN
    ASAN_UNPOISON_MEMORY_REGION(f.stack, f.stack_size);  // frames abandoned by an earlier failure
#endif
    make_context(f.ctx, f.stack, f.stack_size, fiber_main, &f);
  }
  fill_order(w, n, sch, true);
  while (b.live > 0) {
    const bool ran = run_pass(w, b);
    if (b.failed) return;
    if (b.live == 0) break;
    if (b.at_barrier > 0 && b.at_barrier == b.live) {  // everyone arrived: release
      const int r = b.bar_mode == 1 ? b.bar_or : (b.bar_mode == 2 ? b.bar_and : b.bar_count);
      for (int t = 0; t < n; ++t) {
        Fiber& f = w.fibers[static_cast<size_t>(t)];
        if (f.state != State::Barrier) continue;
        if (f.result) *f.result = r;
        f.state = State::Runnable;
      }
      b.at_barrier = 0;
      g_stats.barriers.fetch_add(1, std::memory_order_relaxed);
      fill_order(w, n, sch, false);
      continue;
    }
    if (!ran) {
      b.failed = true;
      b.error = where(w, nullptr) + ": " + deadlock_report(w);
      return;
    }
  }
  for (const SharedVar& v : b.vars) {
    const char* p = overwritten_slack(v);
    if (p) {
      b.failed = true;
      b.error = where(w, nullptr) + ": a write past the end of shared variable `" + v.name + "` (" +
                std::to_string(v.bytes) + " bytes), at byte " + std::to_string(p - v.ptr);
      return;
    }
  }
}

// S2H_EMU_STATS=1: what the emulator ran, on stderr at exit.
void print_stats() {
  const Stats s = stats();
  std::fprintf(stderr,
               "s2h emulator (%s): %llu launches, %llu blocks, %llu threads, %llu barriers, %llu warp collectives, "
               "%llu fiber switches\n",
               schedule_name(schedule()).c_str(), static_cast<unsigned long long>(s.launches),
               static_cast<unsigned long long>(s.blocks), static_cast<unsigned long long>(s.threads),
               static_cast<unsigned long long>(s.barriers), static_cast<unsigned long long>(s.warp_ops),
               static_cast<unsigned long long>(s.switches));
}

// Runs one block; true when a fiber faulted (SIGSEGV / SIGBUS), with w.fault_msg set. A fault comes back here
// through siglongjmp, so this frame holds nothing with a destructor.
bool run_block_guarded(Worker& w, Block& b, const Schedule& sch) {
  if (sigsetjmp(w.fault_env, 1) != 0) return true;
  run_block(w, b, sch);
  return false;
}

void check_launch(const LaunchSpec& s) {
  auto bad = [&](const std::string& what) {
    throw EmuError(std::string(s.name) + ": invalid launch: " + what + " (grid " +
                   coords(uint3{s.grid.x, s.grid.y, s.grid.z}) + ", block " +
                   coords(uint3{s.block.x, s.block.y, s.block.z}) + ", " + std::to_string(s.dynamic_smem) +
                   " bytes of dynamic shared memory)");
  };
  if (s.block.x == 0 || s.block.y == 0 || s.block.z == 0) bad("a block dimension is 0");
  if (s.grid.x == 0 || s.grid.y == 0 || s.grid.z == 0) bad("a grid dimension is 0");
  if (s.block.x > kMaxBlockX || s.block.y > kMaxBlockY || s.block.z > kMaxBlockZ)
    bad("block dimensions above (1024, 1024, 64)");
  if (static_cast<unsigned long long>(s.block.x) * s.block.y * s.block.z > kMaxThreads)
    bad("more than 1024 threads per block");
  if (s.grid.x > kMaxGridX || s.grid.y > kMaxGridYZ || s.grid.z > kMaxGridYZ)
    bad("grid dimensions above (2^31-1, 65535, 65535)");
  if (s.param_bytes > kParamLimit)
    bad(std::to_string(s.param_bytes) + " bytes of kernel parameters (the limit is 32764)");
}

}  // namespace

void run_grid(const LaunchSpec& spec) {
  check_launch(spec);
  Worker& w = worker();
  if (w.block) throw EmuError(std::string(spec.name) + ": a launch from inside a kernel is not emulated");
  size_t smem_limit = kStaticSmemLimit;
  bool opted_in = false;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_max_dynamic.find(spec.kernel);
    if (it != g_max_dynamic.end()) {
      opted_in = true;
      if (spec.dynamic_smem > static_cast<size_t>(it->second))
        throw EmuError(std::string(spec.name) + ": invalid launch: " + std::to_string(spec.dynamic_smem) +
                       " bytes of dynamic shared memory exceed the kernel's MaxDynamicSharedMemorySize of " +
                       std::to_string(it->second));
    }
  }
  if (opted_in)
    smem_limit = kOptInSmemLimit;
  else if (spec.dynamic_smem > kStaticSmemLimit)
    throw EmuError(std::string(spec.name) + ": invalid launch: " + std::to_string(spec.dynamic_smem) +
                   " bytes of dynamic shared memory need cudaFuncSetAttribute(MaxDynamicSharedMemorySize) first "
                   "(without it the limit is 48 KB)");
  const Schedule sch = schedule();
  const int n = static_cast<int>(spec.block.x * spec.block.y * spec.block.z);
  w.ensure_stacks(n);
  if (static_cast<int>(w.fibers.size()) < n) w.fibers.resize(static_cast<size_t>(n));
  install_fault_handler(w);
  const uint64_t launch_no = g_stats.launches.fetch_add(1);
  if (g_kernel_report) {
    std::lock_guard<std::mutex> lock(g_mutex);
    KernelUse& use = g_kernels[spec.kernel];
    if (use.launches++ == 0) use.name = spec.name;
  }
  const uint64_t name_hash = std::hash<std::string>()(spec.name);
  if (launch_no == 0 && std::getenv("S2H_EMU_STATS")) std::atexit(print_stats);
  detail::t_block_dim = spec.block;
  detail::t_grid_dim = spec.grid;
  Block b;
  b.spec = &spec;
  b.nthreads = n;
  b.smem_limit = smem_limit;
  struct Reset {  // the worker is idle again however the launch ends
    Worker& w;
    ~Reset() {
      w.block = nullptr;
      w.cur = nullptr;
    }
  } reset{w};
  // The blocks run one after another, in the schedule's order too (forward: x fastest; reverse; shuffle: a
  // seeded full-period permutation k -> (a k + c) mod n), so that a kernel relying on the order of its blocks
  // shows it.
  const uint64_t gx = spec.grid.x, gy = spec.grid.y, nblocks = gx * gy * spec.grid.z;
  uint64_t perm_a = 1, perm_c = 0;
  if (sch.order == Order::Shuffle && nblocks > 1) {
    std::mt19937_64 g(sch.seed ^ name_hash);
    perm_c = g() % nblocks;
    perm_a = g() % nblocks | 1;
    while (std::gcd(perm_a, nblocks) != 1) perm_a = perm_a + 2 < nblocks ? perm_a + 2 : 1;
  }
  for (uint64_t k = 0; k < nblocks; ++k) {
    const uint64_t lin = sch.order == Order::Forward ? k
                         : sch.order == Order::Reverse
                             ? nblocks - 1 - k
                             : static_cast<uint64_t>((static_cast<unsigned __int128>(perm_a) * k + perm_c) % nblocks);
    const unsigned x = static_cast<unsigned>(lin % gx), y = static_cast<unsigned>(lin / gx % gy),
                   z = static_cast<unsigned>(lin / (gx * gy));
    b.idx = uint3{x, y, z};
    b.live = n;
    b.exited = 0;
    b.at_barrier = 0;
    b.first_exited = -1;
    b.failed = false;
    b.vars.clear();
    b.static_bytes = 0;
    w.block = &b;
    detail::t_block_idx = b.idx;
    // The permutations of a block depend on the seed, the kernel's name and the block only, so that a
    // failure seen in a whole suite repeats when its test runs alone.
    if (sch.order == Order::Shuffle)
      w.rng.seed(sch.seed * 0x9E3779B97F4A7C15ull ^ name_hash ^ (uint64_t{x} << 1) ^ (uint64_t{y} << 22) ^
                 (uint64_t{z} << 43));
    if (run_block_guarded(w, b, sch)) {  // a fault inside a fiber (see on_fault)
      b.failed = true;
      b.error = where(w, w.cur) + ": " + w.fault_msg;
    }
    if (b.failed) throw EmuError(b.error);
    g_stats.blocks.fetch_add(1, std::memory_order_relaxed);
    g_stats.threads.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
  }
}

}  // namespace detail

// ------------------------------------------------------------------ cp.async, ldmatrix, mma
void cp_async(void* smem, const void* gmem, int bytes, std::source_location l) {
  Fiber& f = current_fiber("cp.async");
  auto bad = [&](const std::string& what) { fail_here("cp.async (" + site_text(Site::of(l)) + "): " + what); };
  if (bytes != 4 && bytes != 8 && bytes != 16) bad(std::to_string(bytes) + " bytes (expected 4, 8 or 16)");
  if (reinterpret_cast<uintptr_t>(smem) % static_cast<uintptr_t>(bytes) ||
      reinterpret_cast<uintptr_t>(gmem) % static_cast<uintptr_t>(bytes))
    bad("source or destination not aligned to " + std::to_string(bytes) + " bytes");
  if (!detail::is_shared(smem, static_cast<size_t>(bytes)))
    bad("the destination is not inside a shared-memory variable of this block");
  if (detail::is_shared(gmem, static_cast<size_t>(bytes))) bad("the source is shared memory (expected global memory)");
  std::memset(smem, kPoison, static_cast<size_t>(bytes));  // undefined until the wait
  f.copies.push_back({smem, gmem, bytes, f.committed});
}

void cp_async_commit() { ++current_fiber("cp.async.commit_group").committed; }

void cp_async_wait(int pending) {
  Fiber& f = current_fiber("cp.async.wait_group");
  const int limit = f.committed - pending;  // groups below this index are complete after the wait
  while (f.head < f.copies.size() && f.copies[f.head].group < limit) {
    const Copy& c = f.copies[f.head++];
    std::memcpy(c.dst, c.src, static_cast<size_t>(c.bytes));
  }
  if (f.head == f.copies.size()) {
    f.copies.clear();
    f.head = 0;
  }
}

void ldmatrix(uint32_t* r, int count, bool trans, const void* row, std::source_location l) {
  if (count != 1 && count != 2 && count != 4) fail_here("ldmatrix: .x" + std::to_string(count) + " does not exist");
  struct Post {
    uint32_t* r;
    const void* row;
  } post{r, row};
  struct Form {
    const char* name;
    int n;
    bool trans;
  };
  static const Form kForms[] = {{"ldmatrix.x1", 1, false},      {"ldmatrix.x2", 2, false},
                                {"ldmatrix.x4", 4, false},      {"ldmatrix.x1.trans", 1, true},
                                {"ldmatrix.x2.trans", 2, true}, {"ldmatrix.x4.trans", 4, true}};
  const Form& form = kForms[3 * trans + count / 2];  // count 1, 2, 4 -> 0, 1, 2
  WarpCall c;
  c.kind = form.name;
  c.mask = 0xffffffffu;
  c.site = Site::of(l);
  c.in = &post;
  c.ctx = &form;
  c.run = [](const WarpCall* const(&lanes)[32], const void* p) {
    const int n = static_cast<const Form*>(p)->n;
    const bool tr = static_cast<const Form*>(p)->trans;
    uint16_t m[4][8][8];
    for (int i = 0; i < n; ++i)
      for (int rr = 0; rr < 8; ++rr) {
        const int lane = 8 * i + rr;
        const void* a = static_cast<const Post*>(lanes[lane]->in)->row;
        if (reinterpret_cast<uintptr_t>(a) % 16)
          detail::fail(std::string(lanes[0]->kind) + ": lane " + std::to_string(lane) +
                       "'s row address is not 16-byte aligned");
        if (!detail::is_shared(a, 16))
          detail::fail(std::string(lanes[0]->kind) + ": lane " + std::to_string(lane) +
                       "'s row address is not inside a shared-memory variable of this block");
        std::memcpy(m[i][rr], a, 16);
      }
    for (int lane = 0; lane < 32; ++lane) {
      uint32_t* out = static_cast<const Post*>(lanes[lane]->in)->r;
      const int g = lane / 4, t = lane % 4;
      for (int i = 0; i < n; ++i) {
        const uint16_t lo = tr ? m[i][2 * t][g] : m[i][g][2 * t];
        const uint16_t hi = tr ? m[i][2 * t + 1][g] : m[i][g][2 * t + 1];
        out[i] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
      }
    }
  };
  detail::warp_call(c);
}

void mma_m16n8k16_bf16(float* d, const uint32_t* a, const uint32_t* b, const float* c, std::source_location l) {
  struct Post {
    float* d;
    const uint32_t* a;
    const uint32_t* b;
    const float* c;
  } post{d, a, b, c};
  WarpCall call;
  call.kind = "mma.sync.m16n8k16.bf16";
  call.mask = 0xffffffffu;
  call.site = Site::of(l);
  call.in = &post;
  call.run = [](const WarpCall* const(&lanes)[32], const void*) {
    float A[16][16], B[16][8], C[16][8];
    auto lo = [](uint32_t v) { return bf16_float(static_cast<unsigned short>(v & 0xffffu)); };
    auto hi = [](uint32_t v) { return bf16_float(static_cast<unsigned short>(v >> 16)); };
    for (int lane = 0; lane < 32; ++lane) {
      const Post& p = *static_cast<const Post*>(lanes[lane]->in);
      const int g = lane / 4, t = lane % 4;
      // A (row-major 16 x 16): a0,a1 | a2,a3 | a4,a5 | a6,a7 at rows g, g+8, g, g+8 and columns 2t, 2t, 2t+8, 2t+8.
      for (int q = 0; q < 4; ++q) {
        const int row = g + 8 * (q & 1), col = 2 * t + 8 * (q >> 1);
        A[row][col] = lo(p.a[q]);
        A[row][col + 1] = hi(p.a[q]);
      }
      // B (16 x 8, "col"): b0,b1 | b2,b3 at rows (k) 2t, 2t+8 of column g.
      for (int q = 0; q < 2; ++q) {
        B[2 * t + 8 * q][g] = lo(p.b[q]);
        B[2 * t + 8 * q + 1][g] = hi(p.b[q]);
      }
      // C (16 x 8, f32): c0, c1 at row g, columns 2t, 2t+1; c2, c3 at row g+8.
      for (int q = 0; q < 4; ++q) C[g + 8 * (q >> 1)][2 * t + (q & 1)] = p.c[q];
    }
    for (int lane = 0; lane < 32; ++lane) {
      const Post& p = *static_cast<const Post*>(lanes[lane]->in);
      const int g = lane / 4, t = lane % 4;
      for (int q = 0; q < 4; ++q) {
        const int row = g + 8 * (q >> 1), col = 2 * t + (q & 1);
        double s = C[row][col];
        for (int k = 0; k < 16; ++k) s += static_cast<double>(A[row][k]) * B[k][col];
        p.d[q] = static_cast<float>(s);
      }
    }
  };
  detail::warp_call(call);
}

}  // namespace s2h::emu

// ------------------------------------------------------------------ runtime API
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
  }
  return "unknown error";
}

cudaError_t cudaMalloc(void** p, size_t n) {
  *p = std::aligned_alloc(256, (std::max<size_t>(n, 1) + 255) / 256 * 256);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
