//! Starting the application processors: the MADT's CPUs, INIT-SIPI-SIPI, and what each CPU
//! sets up for itself before it takes work.
//!
//! Intel SDM vol. 3A §9.4 "Multiple-Processor (MP) Initialization" (§9.4.4.1 the BSP's
//! sequence) and §11.6.1 (the interrupt command register). After reset only the bootstrap
//! processor runs; the others wait for an INIT and then a start-up IPI (SIPI), which starts them
//! in real mode at `vector << 12`. For each enabled local APIC in the ACPI MADT other than our
//! own, one at a time:
//!
//! 1. allocate its kernel stack and its three IST stacks (double fault, NMI, machine check)
//!    from the frame allocator, and write its parameters into the trampoline page
//!    (`trampoline.rs`): the kernel's CR3, its stack, its per-CPU entry;
//! 2. INIT IPI, wait 10 ms; SIPI, wait 200 µs; if it has not shown up in the trampoline, a
//!    second SIPI (the SDM's sequence; a CPU that already started ignores the second). One INIT
//!    (level assert) and no "INIT level de-assert", which the Pentium 4 and later do not
//!    support (§11.6.1);
//! 3. wait (at most `smp.timeout_ms=`, default 1000) for it to mark itself online. A CPU that
//!    does not is named in the log and left out; the boot goes on. Its entry's state decides
//!    the race with a CPU that is merely late: the CPU moves it `Starting -> Online`, the
//!    bootstrap processor on timeout `Starting -> Absent`, both with a compare-exchange, and a
//!    CPU that loses parks itself (`halt_forever`). Then:
//!    - if it never ran the trampoline, an INIT puts it back to waiting for a SIPI, so that it
//!      cannot wake up later in a trampoline that holds another CPU's parameters (should it get
//!      to Rust first, it finds its entry taken back and parks before touching any lock);
//!    - if it did, it runs kernel code and may hold the heap's or the serial port's lock: an
//!      INIT now would leave that lock held for good. It is left to park itself, and since it
//!      may still read the trampoline page and its entry, no further CPU is started (the same
//!      if the INIT could not be sent).
//!
//! The CPU itself ([`application_processor_main`]), on its own stack with its GS base set:
//! checks its entry still says `Starting`, then its own GDT and TSS
//! (`cpu::gdt::init_application_processor`), the shared IDT, its local APIC
//! (`interrupts::init_this_cpu`), a measurement of its APIC timer, then online, and into the
//! idle loop of `work.rs`.

use core::sync::atomic::{AtomicU64, Ordering};

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::percpu::{self, CpuState, CPUS, MAX_CPUS};
use super::trampoline::{self, Parameters, Trampoline};
use crate::bootinfo::MemoryKind;
use crate::memory::frames::FRAME_SIZE;

/// Each application processor's kernel stack (debug builds are stack-hungry; jobs sent with
/// `run_on`, such as a benchmark's submissions, run on it).
const AP_STACK_BYTES: u64 = 128 * 1024;
/// Each IST stack (as `cpu::gdt::IST_STACK_SIZE`).
const IST_STACK_BYTES: u64 = crate::cpu::gdt::IST_STACK_SIZE as u64;
/// Where the search for a free trampoline page starts (below: the PVH start info, memory map
/// and command line the loader put in the first pages).
const TRAMPOLINE_SEARCH_START: u64 = 0x8000;
/// Real-mode addressable memory: the SIPI vector names a page below this.
const ONE_MIB: u64 = 0x10_0000;
/// Default patience for one CPU to come up.
const DEFAULT_TIMEOUT_MS: u64 = 1000;

/// The IST stack tops of the CPU being started (one starts at a time).
static NEXT_IST_TOPS: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// What happened to one MADT CPU.
pub enum StartOutcome {
    /// Online, as the CPU number it was started with.
    Online,
    /// Did not come up and is parked; the text says how far it got. Its entry and the
    /// trampoline may serve the next CPU.
    Failed(String),
    /// Did not come up, and may still be running the trampoline or kernel code on its way to
    /// parking itself: its entry and the trampoline must not be reused, so no further CPU is
    /// started.
    Abandoned(String),
}

/// What [`start_all`] did, for the `cpus:` line.
pub struct Report {
    /// CPUs the MADT lists as enabled (the bootstrap processor included).
    pub present: usize,
    /// `(APIC ID, what went wrong)` for each one that did not come up.
    pub failures: Vec<(u32, String)>,
}

/// Starts every enabled MADT processor other than the caller. Returns what happened; the
/// caller prints the `cpus:` line.
pub fn start_all() -> Report {
    let platform = crate::acpi_tables::platform();
    let my_apic_id = crate::interrupts::local_apic_id().unwrap_or(0);
    let bsp = percpu::this_cpu();
    bsp.apic_id.store(my_apic_id, Ordering::Relaxed);
    bsp.set_state(CpuState::Online);
    bsp.apic_timer_hz
        .store(crate::interrupts::measure_timer_hz(), Ordering::Relaxed);
    super::set_online(1);

    if let crate::acpi_tables::InterruptSource::Defaults(reason) = &platform.interrupt_source {
        // No MADT (e.g. microvm with acpi=off): there is no list of CPUs to start.
        log::info!(
            "smp: no ACPI MADT ({reason:?}): only this CPU is known; any others stay stopped"
        );
    }
    let others = super::madt_cpus::cpus_to_start(
        platform.processors.iter().map(|p| (p.apic_id, p.enabled)),
        my_apic_id,
    );
    let mut report = Report {
        present: others.len() + 1,
        failures: Vec::new(),
    };
    if others.is_empty() {
        return report;
    }
    if !crate::interrupts::is_initialized() {
        for apic_id in others {
            report.failures.push((
                apic_id,
                String::from("no local APIC to send INIT-SIPI-SIPI with"),
            ));
        }
        return report;
    }
    let Some(page) = find_trampoline_page() else {
        for apic_id in others {
            report.failures.push((
                apic_id,
                String::from("no free RAM page below 1 MiB for the start-up trampoline"),
            ));
        }
        return report;
    };
    // SAFETY: `find_trampoline_page` returned a usable, mapped RAM page below 1 MiB that no
    // boot structure occupies; the frame allocator never hands out memory below 1 MiB, so
    // nothing else uses it.
    let trampoline = unsafe { trampoline::install(page) };
    log::info!(
        "smp: trampoline ({} bytes) at {page:#x}, SIPI vector {:#04x}; starting {} CPU(s)",
        trampoline::size(),
        trampoline.startup_vector(),
        others.len()
    );
    let timeout_ms = crate::cmdline::get("smp.timeout_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_TIMEOUT_MS);
    for (position, &apic_id) in others.iter().enumerate() {
        let index = super::online_cpus();
        if index >= MAX_CPUS {
            report.failures.push((
                apic_id,
                format!("the kernel brings up at most {MAX_CPUS} CPUs"),
            ));
            continue;
        }
        if apic_id > 0xff {
            report.failures.push((
                apic_id,
                String::from("x2APIC ID above 255: not addressable in xAPIC mode"),
            ));
            continue;
        }
        match start_one(&trampoline, index, apic_id, timeout_ms) {
            StartOutcome::Online => super::set_online(index + 1),
            StartOutcome::Failed(why) => {
                CPUS[index].reset(0, 0);
                report.failures.push((apic_id, why));
            }
            StartOutcome::Abandoned(why) => {
                report.failures.push((apic_id, why));
                let why_not = format!(
                    "not started: the CPU with APIC ID {apic_id} may still use the start-up \
                     trampoline"
                );
                for &later in &others[position + 1..] {
                    report.failures.push((later, why_not.clone()));
                }
                break;
            }
        }
    }
    report
}

/// The first 4 KiB page at or above [`TRAMPOLINE_SEARCH_START`] and below 1 MiB that the
/// memory map calls usable, the kernel maps as RAM, and no boot structure touches.
fn find_trampoline_page() -> Option<u64> {
    let boot = crate::boot::info()?;
    let size = trampoline::size() as u64;
    if size > FRAME_SIZE {
        log::error!("smp: the trampoline ({size} bytes) does not fit a page");
        return None;
    }
    (TRAMPOLINE_SEARCH_START..ONE_MIB)
        .step_by(FRAME_SIZE as usize)
        .find(|&page| {
            let end = page + FRAME_SIZE;
            let usable = boot.memory.iter().any(|region| {
                region.kind == MemoryKind::Usable
                    && region.start <= page
                    && end <= region.start + region.len
            });
            let reserved = boot
                .reserved
                .iter()
                .any(|(start, len)| start < end && page < start + len);
            let mapped =
                crate::memory::ram_phys_range(crate::memory::phys_to_virt(page), 4096).is_some();
            usable && !reserved && mapped
        })
}

/// Contiguous frames for a stack of `bytes`, returned as the top address of the run.
fn stack(bytes: u64) -> Option<u64> {
    let frames = bytes.div_ceil(FRAME_SIZE) as usize;
    crate::memory::allocate_frames(frames)
        .ok()
        .map(|bottom| bottom + frames as u64 * FRAME_SIZE)
}

/// Busy-waits `us` microseconds on the TSC (or a fixed spin count before it is calibrated).
fn delay_us(us: u64) {
    let hz = crate::clock::tsc_hz();
    if hz == 0 {
        for _ in 0..us * 1000 {
            core::hint::spin_loop();
        }
        return;
    }
    let start = crate::clock::tsc();
    let ticks = hz / 1_000_000 * us;
    while crate::clock::tsc().wrapping_sub(start) < ticks {
        core::hint::spin_loop();
    }
}

/// Whether INIT-SIPI-SIPI should skip the SIPIs for `apic_id` (the self-test build's
/// `smp.test_silent=<apic id>`: a CPU that never answers, to test the timeout path).
fn silenced_for_test(apic_id: u32) -> bool {
    #[cfg(feature = "selftest")]
    {
        crate::cmdline::get("smp.test_silent").and_then(|v| v.parse::<u32>().ok()) == Some(apic_id)
    }
    #[cfg(not(feature = "selftest"))]
    {
        let _ = apic_id;
        false
    }
}

/// Starts the CPU with local APIC `apic_id` as CPU `index`.
fn start_one(trampoline: &Trampoline, index: usize, apic_id: u32, timeout_ms: u64) -> StartOutcome {
    let (Some(stack_top), Some(df), Some(nmi), Some(mc)) = (
        stack(AP_STACK_BYTES),
        stack(IST_STACK_BYTES),
        stack(IST_STACK_BYTES),
        stack(IST_STACK_BYTES),
    ) else {
        // The frames of a partial success stay allocated: a few pages, once, at boot.
        return StartOutcome::Failed(String::from("no memory for its stacks"));
    };
    for (slot, top) in NEXT_IST_TOPS.iter().zip([df, nmi, mc]) {
        slot.store(top, Ordering::SeqCst);
    }
    let entry = &CPUS[index];
    entry.reset(index, apic_id);
    entry.set_stacks([
        (stack_top - AP_STACK_BYTES, stack_top),
        (df - IST_STACK_BYTES, df),
        (nmi - IST_STACK_BYTES, nmi),
        (mc - IST_STACK_BYTES, mc),
    ]);
    entry.set_state(CpuState::Starting);

    use x86_64::registers::control::{Cr3, Cr4};
    use x86_64::registers::model_specific::{Efer, EferFlags};
    let efer = Efer::read();
    let mut efer_bits = EferFlags::LONG_MODE_ENABLE.bits();
    if efer.contains(EferFlags::NO_EXECUTE_ENABLE) {
        efer_bits |= EferFlags::NO_EXECUTE_ENABLE.bits();
    }
    trampoline.prepare(&Parameters {
        cr3: Cr3::read_raw().0.start_address().as_u64(),
        cr4: Cr4::read_raw(),
        efer_bits,
        gs_base: percpu::gs_base_of(index),
        stack_top,
        cpu: index as u64,
        entry: application_processor_main as *const () as u64,
    });

    // SDM vol. 3A §9.4.4.1: INIT, 10 ms, SIPI, 200 µs, SIPI.
    if let Err(error) = crate::interrupts::send_init(apic_id) {
        return StartOutcome::Failed(format!("INIT IPI not sent: {error}"));
    }
    delay_us(10_000);
    let silent = silenced_for_test(apic_id);
    let mut startup_error = None;
    if !silent {
        for _ in 0..2 {
            if let Err(error) =
                crate::interrupts::send_startup(apic_id, trampoline.startup_vector())
            {
                // This SIPI may still have gone out, or the first one have started the CPU:
                // wait for it and clean up like for any CPU that does not answer.
                startup_error = Some(error);
                break;
            }
            delay_us(200);
            if trampoline.has_arrived() {
                break;
            }
        }
    }
    let start = crate::clock::uptime_ns();
    let mut spins: u64 = 0;
    loop {
        if entry.state() == CpuState::Online {
            return StartOutcome::Online;
        }
        let waited_ms = if crate::clock::tsc_hz() != 0 {
            (crate::clock::uptime_ns() - start) / 1_000_000
        } else {
            spins / 100_000
        };
        if waited_ms >= timeout_ms {
            break;
        }
        spins += 1;
        core::hint::spin_loop();
    }
    let unanswered = match startup_error {
        Some(error) => {
            format!("did not answer within {timeout_ms} ms (start-up IPI not sent: {error}; ")
        }
        None => format!("did not answer within {timeout_ms} ms ("),
    };
    // Take the entry back: from now on the CPU parks itself when it looks at it (see the module
    // docs). Losing this race to `Online` means it came online just now.
    match entry.transition(CpuState::Starting, CpuState::Absent) {
        Ok(()) => {}
        Err(CpuState::Online) => return StartOutcome::Online,
        Err(other) => {
            // Only a crash report (`stop.rs`) moves it elsewhere; leave it alone.
            return StartOutcome::Abandoned(format!(
                "{unanswered}its entry says {})",
                other.name()
            ));
        }
    }
    // The compare-exchange above is a full barrier, and the CPU sets "arrived" well before its
    // first look at the entry (with serialising CR0/CR3 writes in between): if "arrived" is
    // still clear here, that look will see the entry taken back.
    if trampoline.has_arrived() {
        // No INIT: it may hold a lock (module docs).
        return StartOutcome::Abandoned(format!(
            "{unanswered}it ran the trampoline but did not come online; it parks itself)"
        ));
    }
    // Park it again, so that a late start cannot run the trampoline with the next CPU's
    // parameters.
    if let Err(error) = crate::interrupts::send_init(apic_id) {
        return StartOutcome::Abandoned(format!(
            "{unanswered}it never ran the trampoline, and the INIT to park it was not sent: \
             {error})"
        ));
    }
    let how_far = if silent {
        "smp.test_silent: no start-up IPI was sent"
    } else {
        "it never ran the trampoline"
    };
    StartOutcome::Failed(format!("{unanswered}{how_far})"))
}

/// Where an application processor enters Rust (called by the trampoline on its own stack, GS
/// base set, interrupts off).
extern "C" fn application_processor_main(cpu: usize) -> ! {
    if percpu::this_cpu().state() != CpuState::Starting {
        // The bootstrap processor gave up on this CPU before it got here: park holding
        // nothing, so that the INIT it may send next cannot leave a lock held.
        crate::exit::halt_forever();
    }
    let ist_tops = [
        NEXT_IST_TOPS[0].load(Ordering::SeqCst),
        NEXT_IST_TOPS[1].load(Ordering::SeqCst),
        NEXT_IST_TOPS[2].load(Ordering::SeqCst),
    ];
    crate::cpu::gdt::init_application_processor(ist_tops);
    crate::cpu::idt::load_on_this_cpu();
    let me = percpu::this_cpu();
    match crate::interrupts::init_this_cpu() {
        Ok(apic_id) if apic_id == me.apic_id.load(Ordering::Relaxed) => {}
        Ok(apic_id) => {
            log::warn!(
                "smp: CPU {cpu} reads local APIC ID {apic_id}, the MADT said {}",
                me.apic_id.load(Ordering::Relaxed)
            );
            me.apic_id.store(apic_id, Ordering::Relaxed);
        }
        Err(error) => log::error!("smp: CPU {cpu}: local APIC set-up failed: {error}"),
    }
    me.apic_timer_hz
        .store(crate::interrupts::measure_timer_hz(), Ordering::Relaxed);
    #[cfg(feature = "selftest")]
    slow_start_for_test(me);
    if me.transition(CpuState::Starting, CpuState::Online).is_err() {
        // Too late: the bootstrap processor gave up on this CPU and may reuse nothing of it.
        crate::exit::halt_forever();
    }
    super::work::idle_loop()
}

/// The self-test build's `smp.test_slow=<apic id>`: that CPU, just before it would go online,
/// holds the serial port's lock until the bootstrap processor has given up on it (at most ten
/// timeouts), to test the late-arrival path: an INIT now would leave the lock held and hang the
/// next print.
#[cfg(feature = "selftest")]
fn slow_start_for_test(me: &percpu::PerCpu) {
    let slow = crate::cmdline::get("smp.test_slow").and_then(|v| v.parse::<u32>().ok());
    if slow != Some(me.apic_id.load(Ordering::Relaxed)) {
        return;
    }
    let timeout_ms = crate::cmdline::get("smp.timeout_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_TIMEOUT_MS);
    let start = crate::clock::uptime_ns();
    crate::serial::while_locked(|| {
        while me.state() == CpuState::Starting
            && crate::clock::uptime_ns() - start < timeout_ms.saturating_mul(10_000_000)
        {
            core::hint::spin_loop();
        }
    });
}
