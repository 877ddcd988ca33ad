//! Per-CPU data: one cache-line-aligned [`PerCpu`] per CPU, found through the GS base.
//!
//! Each CPU's `IA32_GS_BASE` MSR (C000_0101h, Intel SDM vol. 3A §3.4.4.1 "Segment Loading
//! Instructions in IA-32e Mode", vol. 4 MSR list) holds the address of its own entry in
//! [`CPUS`], written before the CPU runs its first line of Rust: by `boot/entry.rs` for the
//! bootstrap processor, by the trampoline (`smp/trampoline.rs`) for the others. The entry's
//! first field is the CPU's index, so [`current_index`] is one `mov reg, gs:[0]`: no lock, no
//! shared variable, no local APIC register read.
//!
//! Nothing here is shared between CPUs on a hot path: each CPU writes only its own entry (the
//! counters, its halt flag), and entries are 64-byte aligned so two CPUs' counters never share a
//! cache line. Other CPUs read an entry (the shell's `cpus`, `smp::apic_id`) and push jobs onto
//! its work queue, the one lock an entry has (see `smp/work.rs`).
//!
//! The GS *selector* is never reloaded after the base is written (`cpu::gdt` leaves GS alone):
//! loading a null selector into GS may clear the base (QEMU's TCG does).

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use alloc::collections::VecDeque;
use spin::Mutex;

use super::work::Job;

/// The most CPUs the kernel brings up; further MADT entries are reported and left alone.
pub const MAX_CPUS: usize = 64;

/// `IA32_GS_BASE`.
pub const IA32_GS_BASE: u32 = 0xc000_0101;

/// Where a CPU is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CpuState {
    /// No CPU uses this entry.
    Absent = 0,
    /// INIT-SIPI-SIPI sent, the CPU has not reported in yet.
    Starting = 1,
    /// Running the kernel: idle (halted) or working.
    Online = 2,
    /// Stopped by another CPU's panic or exception report.
    Stopped = 3,
}

impl CpuState {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => CpuState::Starting,
            2 => CpuState::Online,
            3 => CpuState::Stopped,
            _ => CpuState::Absent,
        }
    }

    /// The word the shell prints.
    pub fn name(self) -> &'static str {
        match self {
            CpuState::Absent => "absent",
            CpuState::Starting => "starting",
            CpuState::Online => "online",
            CpuState::Stopped => "stopped",
        }
    }
}

/// One CPU's private state. `#[repr(C)]` because `index` must stay at offset 0 (read as
/// `gs:[0]`).
#[repr(C, align(64))]
pub struct PerCpu {
    /// This entry's index in [`CPUS`]: the CPU number. Offset 0, see the module docs.
    index: AtomicUsize,
    /// The local APIC ID of the CPU using this entry.
    pub apic_id: AtomicU32,
    state: AtomicU8,
    /// Set while a `wait` on this CPU is in `hlt` (wait.rs counts watchdog wake-ups with it).
    pub in_wait_halt: AtomicBool,
    /// Set while CPU 0 runs queued jobs inside the work IPI's handler (`smp/work.rs`): the
    /// waits refuse to halt then, since no interrupt could end the halt.
    pub in_work_ipi: AtomicBool,
    /// Interrupts (vectors 32..=255) this CPU dispatched.
    pub interrupts: AtomicU64,
    /// Work items ([`super::run_on`]) this CPU ran.
    pub work_run: AtomicU64,
    /// Work IPIs this CPU received.
    pub work_ipis: AtomicU64,
    /// The local APIC timer's input frequency as measured on this CPU (ticks of the
    /// divide-by-16 clock per second), 0 if not measured.
    pub apic_timer_hz: AtomicU64,
    /// `(lowest address, one past the highest)` of this CPU's kernel stack and its three IST
    /// stacks, for backtraces; zero for the bootstrap processor (whose stacks are statics).
    stacks: [(AtomicU64, AtomicU64); 4],
    /// Jobs waiting to run on this CPU (pushed by any CPU, popped by this one). Taken with
    /// interrupts disabled, so the work IPI handler can never find it held by the code it
    /// interrupted on the same CPU.
    pub work: Mutex<VecDeque<Job>>,
}

impl PerCpu {
    const fn new() -> Self {
        PerCpu {
            index: AtomicUsize::new(0),
            apic_id: AtomicU32::new(0),
            state: AtomicU8::new(CpuState::Absent as u8),
            in_wait_halt: AtomicBool::new(false),
            in_work_ipi: AtomicBool::new(false),
            interrupts: AtomicU64::new(0),
            work_run: AtomicU64::new(0),
            work_ipis: AtomicU64::new(0),
            apic_timer_hz: AtomicU64::new(0),
            stacks: [const { (AtomicU64::new(0), AtomicU64::new(0)) }; 4],
            work: Mutex::new(VecDeque::new()),
        }
    }

    /// This entry's CPU number.
    pub fn index(&self) -> usize {
        self.index.load(Ordering::Relaxed)
    }

    /// Where the CPU is in its life.
    pub fn state(&self) -> CpuState {
        CpuState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Moves the CPU to `state`.
    pub fn set_state(&self, state: CpuState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Moves the CPU from `from` to `to` if it is in `from`; otherwise returns the state it is
    /// in. What decides, between a starting CPU and the bootstrap processor giving up on it,
    /// which of the two wins (`startup.rs`).
    pub fn transition(&self, from: CpuState, to: CpuState) -> Result<(), CpuState> {
        self.state
            .compare_exchange(from as u8, to as u8, Ordering::SeqCst, Ordering::SeqCst)
            .map(|_| ())
            .map_err(CpuState::from_u8)
    }

    /// This CPU's own stacks (see the field).
    pub fn stacks(&self) -> [(u64, u64); 4] {
        let bounds = |i: usize| {
            (
                self.stacks[i].0.load(Ordering::Relaxed),
                self.stacks[i].1.load(Ordering::Relaxed),
            )
        };
        [bounds(0), bounds(1), bounds(2), bounds(3)]
    }

    /// Records the CPU's kernel stack and IST stacks (see the field).
    pub fn set_stacks(&self, stacks: [(u64, u64); 4]) {
        for (slot, (low, high)) in self.stacks.iter().zip(stacks) {
            slot.0.store(low, Ordering::Relaxed);
            slot.1.store(high, Ordering::Relaxed);
        }
    }

    /// Clears the entry for CPU `index` (before starting a CPU on it).
    pub fn reset(&self, index: usize, apic_id: u32) {
        self.index.store(index, Ordering::Relaxed);
        self.apic_id.store(apic_id, Ordering::Relaxed);
        self.in_wait_halt.store(false, Ordering::Relaxed);
        self.in_work_ipi.store(false, Ordering::Relaxed);
        self.interrupts.store(0, Ordering::Relaxed);
        self.work_run.store(0, Ordering::Relaxed);
        self.work_ipis.store(0, Ordering::Relaxed);
        self.apic_timer_hz.store(0, Ordering::Relaxed);
        self.set_stacks([(0, 0); 4]);
        self.set_state(CpuState::Absent);
    }
}

/// Every CPU's entry; entry 0 is the bootstrap processor's (`boot/entry.rs` names it in the
/// assembly that writes the GS base).
pub static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

/// The index of the CPU running this (see the module docs).
#[inline]
pub fn current_index() -> usize {
    let index: usize;
    // SAFETY: the GS base of every CPU points at its `PerCpu` in `CPUS` from before its first
    // Rust instruction, and `index` (an `AtomicUsize`, same layout as `usize`) is at offset 0.
    // An aligned 8-byte load is atomic, so this is a relaxed atomic read of that field.
    unsafe {
        core::arch::asm!(
            "mov {}, gs:[0]",
            out(reg) index,
            options(nostack, preserves_flags, readonly)
        );
    }
    index
}

/// This CPU's entry.
#[inline]
pub fn this_cpu() -> &'static PerCpu {
    // `current_index` is always < MAX_CPUS (only indices of CPUS are ever stored); the
    // fallback keeps this total.
    CPUS.get(current_index()).unwrap_or(&CPUS[0])
}

/// The address to put in `IA32_GS_BASE` for CPU `index`.
pub fn gs_base_of(index: usize) -> u64 {
    core::ptr::addr_of!(CPUS[index.min(MAX_CPUS - 1)]) as u64
}
