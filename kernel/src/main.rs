//! # A teaching kernel for virtio
//!
//! `kernel_main` is where Rust begins: `boot/entry.rs` brought the CPU from the
//! PVH 32-bit entry into long mode and calls it with the physical address of
//! the PVH `hvm_start_info`. From here the kernel brings itself up in a fixed
//! order, each step relying only on the ones before it:
//!
//! ```text
//! serial      COM1, so everything after can be seen
//! boot        parse hvm_start_info -> BootInfo (memory map, cmdline, RSDP)
//! cmdline     key=value words from -append
//! logger      log crate -> serial, level from log=
//! cpu         GDT, TSS (IST stacks), IDT: exceptions are now reported
//! [fail=...]  deliberate panic / page fault, to prove the harness sees them
//! clock       TSC calibration (timestamps in the log from here on)
//! memory      frames, the kernel's page tables, heap: `alloc` works after this
//! acpi        RSDP -> MADT, MCFG
//! interrupts  PIC masked, LAPIC, IOAPIC
//! virtio      find every virtio device (PCI, virtio-mmio); bring none up
//! net         the virtio-net driver brings each network card up (net/nic.rs)
//! then        mode=selftest: run the self-tests and exit QEMU
//!             mode=bench: run the benchmarks (bench.rs) and exit QEMU
//! block       bring the disks up, name them vda, vdb, ... (block/mod.rs)
//! console     bring the virtio console up for the shell (shell/console.rs)
//!             then print "kernel: ready" and idle
//! ```
//!
//! docs/01-boot.md walks through the first half of this in detail.

#![no_std]
#![no_main]

extern crate alloc;

mod acpi_tables;
mod bench;
mod block;
mod boot;
mod bootinfo;
mod clock;
mod cmdline;
mod cpu;
mod exit;
mod hal_impl;
mod interrupts;
mod logger;
mod memory;
mod net;
mod peer;
mod selftest;
mod selftest_api;
mod serial;
mod shell;
mod virtio;
mod wait;

use alloc::vec::Vec;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

/// An address far above the 4 GiB the boot page tables map (and above any
/// RAM the kernel maps later), for `fail=pagefault`. It must be canonical
/// (bits 63..47 all equal): a non-canonical address such as 0xdead_beef_0000
/// raises #GP, not #PF.
const UNMAPPED_ADDRESS: u64 = 0x7e57_dead_0000;

/// Called by `boot/entry.rs` in 64-bit mode, on the boot stack, interrupts off.
pub extern "C" fn kernel_main(start_info_phys: u64) -> ! {
    serial::init();
    println!("kernel: booting (PVH), start info at {start_info_phys:#x}");

    let boot_info = match boot::init(start_info_phys) {
        Ok(info) => info,
        Err(error) => {
            println!("kernel: cannot boot: {error}");
            exit::qemu_exit(exit::EXIT_PANIC)
        }
    };
    cmdline::init(boot_info.cmdline);
    logger::init(cmdline::get("log"));
    boot::log_summary();

    cpu::init();
    match cmdline::get("fail") {
        Some("panic") => panic!("deliberate panic requested by fail=panic"),
        Some("pagefault") => {
            log::info!("fail=pagefault: reading {UNMAPPED_ADDRESS:#x}");
            // SAFETY: not safe at all, on purpose: the address is unmapped and
            // the read raises #PF, whose report ends the run.
            let value = unsafe { core::ptr::read_volatile(UNMAPPED_ADDRESS as *const u64) };
            log::error!("fail=pagefault: read {value:#x} from an unmapped address?!");
        }
        Some(other) => log::warn!("unknown fail={other:?} ignored (want panic or pagefault)"),
        None => {}
    }

    clock::init();
    memory::init(boot_info);
    acpi_tables::init(boot_info.rsdp);
    interrupts::init();
    virtio::probe();
    net::claim_devices();

    if cmdline::get("mode") == Some("selftest") {
        let tests: Vec<selftest_api::SelfTest> = [
            boot::selftests(),
            cmdline::selftests(),
            cpu::selftests(),
            clock::selftests(),
            memory::selftests(),
            interrupts::selftests(),
            virtio::selftests(),
            // The first block test brings the blk devices up, after the
            // raw-ring tests above have used them and handed them back.
            block::selftests(),
            net::selftests(),
            shell::selftests(),
        ]
        .into_iter()
        .flatten()
        .collect();
        selftest::run(&tests);
    }
    if cmdline::get("mode") == Some("bench") {
        // The benchmarks bring up the devices they drive (the disks here,
        // the console in its section).
        block::init();
        bench::run();
    }
    block::init();

    net::start();
    // Brought up before `kernel: ready`, so that every `virtio:` line (the
    // console's comes from its driver) precedes it; a device no driver took
    // is left reset, with its line.
    let console_ready = shell::console::init();
    virtio::leave_untaken(None);
    println!("kernel: ready");
    // With a virtio console, the shell takes the CPU (it runs the network
    // rounds itself); it returns only if the console has no port to use.
    if console_ready {
        shell::run();
    }
    // The idle loop: runs the network stack, halts between interrupts.
    net::run()
}

/// Set by the first panic; a panic while reporting one must not recurse.
static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    x86_64::instructions::interrupts::disable();
    // The serial lock may be held by whoever panicked: bypass it.
    let mut out = serial::emergency_writer();
    if PANICKING.swap(true, Ordering::SeqCst) {
        let _ = writeln!(out, "\nPANIC while panicking: {}", info.message());
        exit::qemu_exit(exit::EXIT_PANIC);
    }
    let (file, line) = info
        .location()
        .map_or(("<unknown>", 0), |l| (l.file(), l.line()));
    let _ = writeln!(out, "\nPANIC at {file}:{line}: {}", info.message());
    // The person at the virtio console sees it too (EMERG_WRITE, no queues).
    shell::console::emergency_print(format_args!(
        "\nPANIC at {file}:{line}: {}\n",
        info.message()
    ));
    let _ = write!(out, "  backtrace:");
    let _ = cpu::backtrace::write(&mut out, cpu::backtrace::current_rbp());
    let _ = writeln!(out);
    exit::qemu_exit(exit::EXIT_PANIC)
}
