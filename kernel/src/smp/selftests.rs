//! Self-tests of SMP bring-up and `run_on` (feature `selftest`).
//!
//! - every online CPU runs a job sent with `run_on` and reports its own `current_cpu()` and
//!   local APIC ID, which must be the CPU's number and `apic_id(cpu)` (all distinct); with
//!   `expect.cpus=N` on the command line, N CPUs must be online;
//! - `run_on_all`: every CPU runs its share at the same time (each waits until all started);
//! - IPI round trips: a number of empty jobs to every other CPU, each waited for; the counts of
//!   jobs run and work IPIs taken on the target must grow by at least that much;
//! - a job an application processor sends to CPU 0 runs on CPU 0 (in its IPI handler);
//! - each CPU's local APIC timer fires on that CPU (a one-shot armed from a job on it);
//! - the message `interrupts::msi_message_to(vector, apic_id(cpu))` names that APIC ID and
//!   vector, and the fixed interrupt it describes, sent through the ICR (a CPU cannot make the
//!   device's memory write itself: its stores to 0xFEEx_xxxx reach its own local APIC), runs
//!   its handler on CPU `cpu`, and is counted there;
//! - the shell's `cpus` table has one row per CPU that matches the per-CPU entries;
//! - every CPU runs with caching enabled (CR0.CD and CR0.NW clear: the trampoline clears what
//!   power-up set and INIT kept);
//! - a job that CPU 0 runs in its work IPI handler and that waits for another job gets
//!   `SmpError::WaitInWorkIpi` instead of halting forever.
//!
//! And, on request, crashes on several CPUs ([`fail_on_request`]): `fail=smp-panic` makes
//! every CPU panic at the same moment (one report must come out), `fail=smp-pagefault` makes
//! CPU 1 read an unmapped address (its exception report must name CPU 1).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::{apic_id, current_cpu, online_cpus, run_on, CPUS, MAX_CPUS};
use crate::selftest_api::SelfTest;

/// Patience for one job.
const JOB_TIMEOUT_NS: u64 = 2_000_000_000;
/// Round trips per CPU in the IPI test.
const ROUND_TRIPS: u64 = 100;

pub fn selftests() -> Vec<SelfTest> {
    vec![
        SelfTest {
            name: "smp: every CPU runs a job and reports its own number and APIC ID",
            run: every_cpu_reports_itself,
        },
        SelfTest {
            name: "smp: run_on_all runs a share on every CPU at the same time",
            run: every_cpu_at_once,
        },
        SelfTest {
            name: "smp: IPI round trips to every other CPU",
            run: ipi_round_trips,
        },
        SelfTest {
            name: "smp: a job sent from another CPU to CPU 0 runs on CPU 0",
            run: job_to_cpu0,
        },
        SelfTest {
            name: "smp: each CPU's local APIC timer fires on that CPU",
            run: timer_fires_per_cpu,
        },
        SelfTest {
            name: "smp: an interrupt addressed to a CPU's APIC ID runs its handler on that CPU",
            run: interrupt_reaches_the_addressed_cpu,
        },
        SelfTest {
            name: "smp: the shell's `cpus` lists every online CPU with its APIC ID and counts",
            run: cpus_command_lists_every_cpu,
        },
        SelfTest {
            name: "smp: every CPU runs with caching enabled (CR0.CD and CR0.NW clear)",
            run: every_cpu_caches,
        },
        SelfTest {
            name: "smp: a wait inside CPU 0's work IPI handler returns an error, not a hang",
            run: wait_in_work_ipi_fails,
        },
    ]
}

fn every_cpu_reports_itself() -> Result<(), String> {
    let online = online_cpus();
    if let Some(expected) = crate::cmdline::get("expect.cpus") {
        if expected != format!("{online}") {
            return Err(format!("{online} CPUs online, expect.cpus={expected}"));
        }
    }
    let mut seen_ids = Vec::new();
    for cpu in 0..online {
        let (reported, local_id) =
            run_on(cpu, || (current_cpu(), crate::interrupts::local_apic_id()))
                .and_then(|pending| pending.wait(JOB_TIMEOUT_NS))
                .map_err(|e| format!("CPU {cpu}: {e}"))?;
        if reported != cpu {
            return Err(format!("a job sent to CPU {cpu} ran on CPU {reported}"));
        }
        let expected = apic_id(cpu).ok_or_else(|| format!("no APIC ID for CPU {cpu}"))?;
        if local_id != Some(expected) {
            return Err(format!(
                "CPU {cpu} reads APIC ID {local_id:?}, apic_id() says {expected}"
            ));
        }
        if seen_ids.contains(&expected) {
            return Err(format!("APIC ID {expected} appears twice"));
        }
        seen_ids.push(expected);
    }
    log::info!("smp: {online} CPU(s) ran a job each, APIC IDs {seen_ids:?}");
    Ok(())
}

/// Shares of `every_cpu_at_once` that have started.
static SHARES_STARTED: AtomicUsize = AtomicUsize::new(0);

fn every_cpu_at_once() -> Result<(), String> {
    let online = online_cpus();
    SHARES_STARTED.store(0, Ordering::SeqCst);
    // Each share waits until every share has started: that ends only if they all run at once.
    let results = super::run_on_all(
        move |cpu| {
            SHARES_STARTED.fetch_add(1, Ordering::SeqCst);
            let start = crate::clock::uptime_ns();
            while SHARES_STARTED.load(Ordering::SeqCst) < online
                && crate::clock::uptime_ns() - start < JOB_TIMEOUT_NS / 2
            {
                core::hint::spin_loop();
            }
            (cpu, current_cpu(), SHARES_STARTED.load(Ordering::SeqCst))
        },
        JOB_TIMEOUT_NS,
    )
    .map_err(|e| format!("{e}"))?;
    if results.len() != online {
        return Err(format!("{} results for {online} CPUs", results.len()));
    }
    for (index, (cpu, ran_on, started)) in results.into_iter().enumerate() {
        if cpu != index || ran_on != index {
            return Err(format!(
                "share {index} was for CPU {cpu} and ran on CPU {ran_on}"
            ));
        }
        if started != online {
            return Err(format!(
                "CPU {cpu} saw {started} of {online} shares started"
            ));
        }
    }
    Ok(())
}

fn ipi_round_trips() -> Result<(), String> {
    let online = online_cpus();
    if online < 2 {
        log::info!("smp: one CPU online, no round trips to make");
        return Ok(());
    }
    let mut total = 0;
    for (cpu, entry) in CPUS.iter().enumerate().take(online).skip(1) {
        let runs_before = entry.work_run.load(Ordering::Relaxed);
        let ipis_before = entry.work_ipis.load(Ordering::Relaxed);
        for trip in 0..ROUND_TRIPS {
            let answer = run_on(cpu, move || trip + 1)
                .and_then(|pending| pending.wait(JOB_TIMEOUT_NS))
                .map_err(|e| format!("round trip {trip} to CPU {cpu}: {e}"))?;
            if answer != trip + 1 {
                return Err(format!("CPU {cpu} answered {answer} to round trip {trip}"));
            }
            total += 1;
        }
        let runs = entry.work_run.load(Ordering::Relaxed) - runs_before;
        let ipis = entry.work_ipis.load(Ordering::Relaxed) - ipis_before;
        if runs < ROUND_TRIPS || ipis == 0 {
            return Err(format!(
                "CPU {cpu}: {runs} jobs run and {ipis} work IPIs for {ROUND_TRIPS} round trips"
            ));
        }
    }
    log::info!("smp: {total} IPI round trips to {} CPU(s)", online - 1);
    Ok(())
}

fn job_to_cpu0() -> Result<(), String> {
    if online_cpus() < 2 {
        return Ok(());
    }
    let nested = run_on(1, || {
        run_on(0, current_cpu).and_then(|pending| pending.wait(JOB_TIMEOUT_NS))
    })
    .and_then(|pending| pending.wait(2 * JOB_TIMEOUT_NS))
    .map_err(|e| format!("the job on CPU 1: {e}"))?;
    match nested {
        Ok(0) => Ok(()),
        Ok(other) => Err(format!("the job for CPU 0 ran on CPU {other}")),
        Err(e) => Err(format!("CPU 1's job for CPU 0: {e}")),
    }
}

/// Timer interrupts taken, per CPU.
static TIMER_FIRES: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

fn timer_fired(_vector: u8) {
    TIMER_FIRES[current_cpu()].fetch_add(1, Ordering::Relaxed);
}

fn timer_fires_per_cpu() -> Result<(), String> {
    let vector = crate::interrupts::allocate_vector(timer_fired).map_err(|e| format!("{e}"))?;
    let result = (|| {
        for cpu in 0..online_cpus() {
            if CPUS[cpu].apic_timer_hz.load(Ordering::Relaxed) == 0 {
                return Err(format!("CPU {cpu}'s APIC timer was not measured"));
            }
            let before = TIMER_FIRES[cpu].load(Ordering::Relaxed);
            let fired = run_on(cpu, move || {
                let armed = crate::interrupts::start_timer_oneshot(vector, 20_000);
                let start = crate::clock::uptime_ns();
                while TIMER_FIRES[current_cpu()].load(Ordering::Relaxed) == before
                    && crate::clock::uptime_ns() - start < JOB_TIMEOUT_NS / 2
                {
                    // Interrupts are on in a job on an application processor; on CPU 0 the
                    // job runs inside `run_on` with whatever the caller had: allow them.
                    crate::interrupts::enable();
                    core::hint::spin_loop();
                }
                crate::interrupts::stop_timer();
                armed.map(|()| TIMER_FIRES[current_cpu()].load(Ordering::Relaxed) - before)
            })
            .and_then(|pending| pending.wait(JOB_TIMEOUT_NS))
            .map_err(|e| format!("CPU {cpu}: {e}"))?
            .map_err(|e| format!("CPU {cpu}: timer not armed: {e}"))?;
            if fired == 0 {
                return Err(format!("CPU {cpu}'s one-shot APIC timer never fired"));
            }
        }
        Ok(())
    })();
    let _ = crate::interrupts::free_vector(vector);
    result?;
    log::info!(
        "smp: one-shot APIC timer fired on each of {} CPU(s)",
        online_cpus()
    );
    Ok(())
}

fn cpus_command_lists_every_cpu() -> Result<(), String> {
    let mut table = String::new();
    crate::shell::cpus::write_table(&mut table).map_err(|_| "formatting failed")?;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect())
        .collect();
    if rows.len() != online_cpus() {
        return Err(format!(
            "{} rows for {} CPUs:\n{table}",
            rows.len(),
            online_cpus()
        ));
    }
    for (cpu, row) in rows.iter().enumerate() {
        let apic = apic_id(cpu).unwrap_or(u32::MAX);
        let work = CPUS[cpu].work_run.load(Ordering::Relaxed);
        let expected_start = [format!("{cpu}"), format!("{apic}"), String::from("online")];
        if row.len() < 7 || row[..3] != expected_start {
            return Err(format!(
                "row {cpu} is {row:?}, expected {expected_start:?} first"
            ));
        }
        // The jobs of the tests before ran and were counted (CPU 0 ran some inline).
        let listed: u64 = row[4]
            .parse()
            .map_err(|_| format!("row {cpu}: work column {:?} is not a number", row[4]))?;
        if listed > work || (cpu > 0 && work == 0) {
            return Err(format!(
                "row {cpu}: {} work items, the counter says {work}",
                row[4]
            ));
        }
    }
    Ok(())
}

/// Canonical, far above any RAM: reading it page-faults (as `selftest::UNMAPPED_ADDRESS`).
const UNMAPPED_ADDRESS: u64 = 0x7e57_dead_0000;

/// CPUs that reached the start line of `fail=smp-panic`.
static AT_START_LINE: AtomicUsize = AtomicUsize::new(0);

/// Every online CPU waits until all are there, then panics.
fn panic_together(online: usize) -> ! {
    AT_START_LINE.fetch_add(1, Ordering::SeqCst);
    let start = crate::clock::uptime_ns();
    while AT_START_LINE.load(Ordering::SeqCst) < online
        && crate::clock::uptime_ns() - start < JOB_TIMEOUT_NS
    {
        core::hint::spin_loop();
    }
    panic!("deliberate panic on CPU {} (fail=smp-panic)", current_cpu())
}

/// `fail=smp-panic` / `fail=smp-pagefault` (see the module docs); called by `smp::init`.
pub fn fail_on_request() {
    let online = online_cpus();
    match crate::cmdline::get("fail") {
        Some("smp-panic") => {
            for cpu in 1..online {
                if let Err(error) = run_on(cpu, move || panic_together(online)) {
                    log::error!("fail=smp-panic: CPU {cpu}: {error}");
                }
            }
            panic_together(online)
        }
        Some("smp-pagefault") if online > 1 => {
            let pending = run_on(1, || {
                log::info!("fail=smp-pagefault: CPU 1 reads {UNMAPPED_ADDRESS:#x}");
                // SAFETY: a read meant to fault: the address is canonical and unmapped, so the
                // load raises #PF before it yields a value. The #PF report naming CPU 1 is the
                // result this knob exists for, and it ends the run: control never comes back
                // here, so no value is ever produced or used.
                unsafe { core::ptr::read_volatile(UNMAPPED_ADDRESS as *const u64) }
            })
            .and_then(|pending| pending.wait(JOB_TIMEOUT_NS));
            log::error!("fail=smp-pagefault: CPU 1 came back with {pending:?}");
        }
        _ => {}
    }
}

/// Interrupts of `interrupt_reaches_the_addressed_cpu` taken, per CPU.
static ADDRESSED_FIRES: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

fn addressed_interrupt(_vector: u8) {
    ADDRESSED_FIRES[current_cpu()].fetch_add(1, Ordering::Relaxed);
}

fn interrupt_reaches_the_addressed_cpu() -> Result<(), String> {
    let vector =
        crate::interrupts::allocate_vector(addressed_interrupt).map_err(|e| format!("{e}"))?;
    let result = (|| {
        for cpu in 0..online_cpus() {
            let target = apic_id(cpu).ok_or_else(|| format!("no APIC ID for CPU {cpu}"))?;
            let before: Vec<u64> = ADDRESSED_FIRES
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect();
            let counted_before = CPUS[cpu].interrupts.load(Ordering::Relaxed);
            let (destination, message_vector) = decode_msi_message(vector, target)?;
            crate::interrupts::send_ipi(destination, message_vector).map_err(|e| format!("{e}"))?;
            let start = crate::clock::uptime_ns();
            while ADDRESSED_FIRES[cpu].load(Ordering::Relaxed) == before[cpu]
                && crate::clock::uptime_ns() - start < JOB_TIMEOUT_NS
            {
                // CPU 0 (the sender) takes its own interrupt once they are enabled.
                crate::interrupts::enable();
                core::hint::spin_loop();
            }
            let fired: Vec<u64> = ADDRESSED_FIRES
                .iter()
                .zip(&before)
                .map(|(count, before)| count.load(Ordering::Relaxed) - before)
                .collect();
            if fired[cpu] != 1 || fired.iter().sum::<u64>() != 1 {
                return Err(format!(
                    "vector {vector:#04x} sent to APIC ID {target} (CPU {cpu}): handler runs per CPU {:?}",
                    &fired[..online_cpus()]
                ));
            }
            if CPUS[cpu].interrupts.load(Ordering::Relaxed) == counted_before {
                return Err(format!("CPU {cpu}'s interrupt count did not move"));
            }
        }
        Ok(())
    })();
    let _ = crate::interrupts::free_vector(vector);
    result
}

/// `msi_message_to(vector, target)`, checked field by field against what the local APIC reads
/// from an MSI write (SDM vol. 3A §11.11.1-2), and decoded to the destination APIC ID and vector
/// the interrupt goes to.
fn decode_msi_message(vector: u8, target: u32) -> Result<(u32, u8), String> {
    let (address, data) =
        crate::interrupts::msi_message_to(vector, target).map_err(|e| format!("{e}"))?;
    // Address: 0xFEE in 31:20, destination ID in 19:12, redirection hint (bit 3) and
    // destination mode (bit 2) 0 = exactly that APIC, physical. Data: vector in 7:0,
    // delivery mode (10:8) fixed, trigger mode (bit 15) edge.
    let destination = ((address >> 12) & 0xff) as u32;
    let message_vector = (data & 0xff) as u8;
    if address >> 32 != 0 || address >> 20 != 0xfee || address & 0b1100 != 0 {
        return Err(format!(
            "MSI address {address:#x} for APIC ID {target} is not a physical, fixed-destination one"
        ));
    }
    if destination != target || message_vector != vector || data & 0x8700 != 0 {
        return Err(format!(
            "MSI message ({address:#x}, {data:#x}) names APIC ID {destination} vector \
             {message_vector:#04x} (delivery/trigger bits {:#x}), expected APIC ID {target} \
             vector {vector:#04x}, fixed, edge",
            data & 0x8700
        ));
    }
    Ok((destination, message_vector))
}

/// CR0.CD (bit 30) and CR0.NW (bit 29): caching disabled, not write-through.
const CR0_CD_NW: u64 = 0x6000_0000;

fn every_cpu_caches() -> Result<(), String> {
    for cpu in 0..online_cpus() {
        let cr0 = run_on(cpu, x86_64::registers::control::Cr0::read_raw)
            .and_then(|pending| pending.wait(JOB_TIMEOUT_NS))
            .map_err(|e| format!("CPU {cpu}: {e}"))?;
        if cr0 & CR0_CD_NW != 0 {
            return Err(format!(
                "CPU {cpu} runs with CR0 = {cr0:#x}: CD/NW set, caching disabled"
            ));
        }
    }
    Ok(())
}

/// Lets the job of `wait_in_work_ipi_fails` on CPU 1 finish.
static RELEASE_CPU1: AtomicBool = AtomicBool::new(false);

fn wait_in_work_ipi_fails() -> Result<(), String> {
    if online_cpus() < 2 {
        return Ok(());
    }
    RELEASE_CPU1.store(false, Ordering::SeqCst);
    // CPU 1 hands CPU 0 a job, which CPU 0 then runs in its work IPI handler, and returns at
    // once. That job waits for a job on CPU 1 that cannot finish until the wait has returned.
    let job_on_cpu0 = run_on(1, || {
        run_on(0, || {
            let in_handler = super::work::in_work_ipi();
            let waited = run_on(1, || {
                let start = crate::clock::uptime_ns();
                while !RELEASE_CPU1.load(Ordering::SeqCst)
                    && crate::clock::uptime_ns() - start < JOB_TIMEOUT_NS
                {
                    core::hint::spin_loop();
                }
            })
            .and_then(|pending| pending.wait(JOB_TIMEOUT_NS));
            RELEASE_CPU1.store(true, Ordering::SeqCst);
            (in_handler, waited)
        })
    })
    .and_then(|pending| pending.wait(JOB_TIMEOUT_NS))
    .and_then(|sent| sent)
    .map_err(|e| format!("sending the job to CPU 0 from CPU 1: {e}"))?;
    let (in_handler, waited) = job_on_cpu0
        .wait(2 * JOB_TIMEOUT_NS)
        .map_err(|e| format!("the job on CPU 0: {e}"))?;
    RELEASE_CPU1.store(true, Ordering::SeqCst);
    if !in_handler {
        return Err(String::from(
            "the job sent to CPU 0 did not run in its work IPI handler",
        ));
    }
    match waited {
        Err(super::SmpError::WaitInWorkIpi { cpu: 1 }) => Ok(()),
        other => Err(format!("the wait inside the handler gave {other:?}")),
    }
}
