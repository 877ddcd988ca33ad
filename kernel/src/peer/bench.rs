//! The block workloads on the peer stack (`mode=bench bench=compare`):
//! the same disk, the same workloads, the same clock as
//! [`crate::block::bench`], driven through `virtio_drivers::device::blk`.
//!
//! [`compare`] alternates: each round runs the block workloads on our
//! driver, then takes the disk they measured (the first, or the one whose
//! serial `bench.disk=` names), resets the device through our driver's
//! transport (virtio 1.2 §3.1.1 step 1: from then on the device holds none
//! of our rings or buffers), hands the PCI function to the peer
//! ([`super::pci::take_over`]), measures, drops the peer (which resets the
//! device) and gives the device back to our driver.
//!
//! ## How the peer is driven
//!
//! `VirtIOBlk` has a fixed 16-entry queue and no interrupt handling of its
//! own, so it is driven the way its API invites: non-blocking submissions
//! (`read_blocks_nb` / `write_blocks_nb`, each notifying the device when
//! VIRTIO_F_RING_EVENT_IDX says to) and polling the used ring
//! (`peek_used`, then `complete_*_blocks`). That is compared with our
//! driver's polling mode. Depth 32 does not fit in 16 descriptors: the
//! engine keeps as many requests in flight as the queue takes and says so
//! (`depth=16 depth_wanted=32`).
//!
//! ## Output
//!
//! ```text
//! bench: blk.peer.setup stack=peer bringup_us=812 queue_size=16 sectors=2097152 read_only=no seconds=1.000
//! bench: blk.randread.qd1.peer stack=peer iops=20512 mib_per_s=80.12 requests=20512 seconds=1.000 depth=1 depth_wanted=1 request_bytes=4096
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use drivers::transport::Transport;
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk};
use virtio_drivers::transport::pci::PciTransport;

use super::hal::PeerHal;
use super::pci::{take_over, PeerError};
use crate::block::pattern::Rng;
use crate::block::SECTOR;
use crate::println;

/// The peer's block driver on our machine.
type PeerBlk = VirtIOBlk<PeerHal, PciTransport>;

// The workload list and warm-up are `crate::block::bench`'s, so both stacks
// run exactly the same shapes.
use crate::block::bench::{Workload, WARMUP_REQUESTS, WORKLOADS};
/// Extra seconds a run may take beyond its measured time before the device
/// is declared stuck.
const STUCK_AFTER_SECONDS: u64 = 10;

/// What one run measured.
struct Measured {
    requests: u64,
    ticks: u64,
    depth: usize,
    /// TSC ticks spent turning a completion into the next request
    /// (collecting it, resubmitting, notifying), measured part only.
    turnaround: u64,
}

/// `bench=compare`: `bench.repeat=` rounds, each running every block
/// workload on our stack ([`crate::block::bench::run`], both wait modes)
/// and then on the peer, handing the device over and back in between.
/// Alternating keeps slow drift on the host (other load, frequency) from
/// favouring whichever stack happened to run first.
pub fn compare() -> Result<(), String> {
    costs();
    for round in 0..super::repeat_count() {
        crate::block::bench::run()?;
        run_peer_round(round == 0)?;
    }
    Ok(())
}

/// Prints what single CPU operations cost in this guest
/// (`bench: cost.<op> ns=<per operation>`): under nested, software-assisted
/// virtualisation (this project's `kvm_pvm` host) instructions that trap
/// cost as much as a device access, so the count of them per request
/// decides a driver's speed as much as its notifications do.
fn costs() {
    const ROUNDS: u64 = 200;
    fn time(name: &str, mut op: impl FnMut()) {
        let started = crate::clock::tsc();
        for _ in 0..ROUNDS {
            op();
        }
        let ns = crate::clock::ticks_to_ns(crate::clock::tsc() - started) as f64 / ROUNDS as f64;
        println!("bench: cost.{name} stack=none ns={ns:.1}");
    }
    // SAFETY: reading IA32_MTRR_DEF_TYPE (0x2ff) and IA32_PAT (0x277) has
    // no side effects; every x86_64 CPU QEMU models has both.
    let (mtrr_def_type, pat) = unsafe {
        (
            x86_64::registers::model_specific::Msr::new(0x2ff).read(),
            x86_64::registers::model_specific::Msr::new(0x277).read(),
        )
    };
    println!("bench: cost.memory_types stack=none mtrr_def_type={mtrr_def_type:#x} pat={pat:#x}");
    let mut sink = 0u64;
    time("loop_100_adds", || {
        for i in 0..100u64 {
            sink = core::hint::black_box(sink.wrapping_add(i));
        }
    });
    time("rdtsc", || sink = sink.wrapping_add(crate::clock::tsc()));
    time("cli_sti", || {
        x86_64::instructions::interrupts::without_interrupts(|| {})
    });
    time("pushf", || {
        sink = sink.wrapping_add(u64::from(x86_64::instructions::interrupts::are_enabled()));
    });
    let lock = spin::Mutex::new(0u64);
    time("spin_lock", || *lock.lock() += 1);
    time("log_enabled_trace", || {
        sink = sink.wrapping_add(u64::from(log::log_enabled!(log::Level::Trace)));
    });
    time("fence_seqcst", || {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst)
    });
    let mut page = alloc::vec![0u8; 4096];
    time("memset_4k", || {
        core::hint::black_box(&mut page).fill(0x5a);
    });
    time("heap_alloc_free_64", || {
        core::hint::black_box(alloc::vec![0u8; 64]);
    });
    // 100 volatile stores to one word, in memory of each kind: where the
    // word lives decides what a store costs.
    fn stores(name: &str, word: *mut u64) {
        time(name, || {
            for i in 0..100u64 {
                // SAFETY: `word` points at a live, aligned u64 the caller owns.
                unsafe { core::ptr::write_volatile(word, i) };
            }
        });
    }
    let mut on_stack = [0u64; 8];
    stores("store_x100_stack", on_stack.as_mut_ptr());
    let mut on_heap = alloc::boxed::Box::new([0u64; 8]);
    stores("store_x100_heap", on_heap.as_mut_ptr());
    if let Ok(mut dma) = crate::block::IoBuffer::new(8 << 20) {
        let base = dma.as_mut_slice().as_mut_ptr();
        let phys = crate::memory::virt_to_phys(base);
        println!("bench: cost.dma_buffer stack=none phys={phys:#x}");
        stores("store_x100_dma_first_page", base.cast());
        // SAFETY: 7 MiB into an 8 MiB buffer, 8-aligned.
        stores(
            "store_x100_dma_7mib_in",
            unsafe { base.add(7 << 20) }.cast(),
        );
    }
    let stack_phys = crate::memory::virt_to_phys(on_stack.as_ptr().cast());
    let heap_phys = crate::memory::virt_to_phys(on_heap.as_ptr().cast());
    println!("bench: cost.where stack=none stack_phys={stack_phys:#x} heap_phys={heap_phys:#x}");
    core::hint::black_box(sink);
}

/// Runs every workload once on the peer: takes the bench disk's device
/// from our driver (reset), measures, drops the peer (its `Drop` resets the
/// device again) and lets our driver bring the device back
/// (`BlkDevice::recover`: a fresh §3.1.1 initialisation on its own rings).
fn run_peer_round(print_setup: bool) -> Result<(), String> {
    crate::block::init();
    let seconds = crate::cmdline::get("bench.seconds")
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0 && *s <= 60.0)
        .unwrap_or(1.0);
    if crate::clock::tsc_hz() == 0 {
        return Err("the TSC is not calibrated: nothing can be timed".into());
    }
    let wanted = crate::cmdline::get("bench.disk");
    let pick = |disks: &mut [crate::block::AllGuard<'static, crate::block::Disk>]| -> Result<usize, String> {
        match wanted {
            Some(serial) => disks.iter().position(|d| d.serial() == serial),
            None => (!disks.is_empty()).then_some(0),
        }
        .ok_or_else(|| format!("no disk to measure (bench.disk={wanted:?})"))
    };
    let (location, writable) = crate::block::with_disks(|disks| {
        let disk = &mut disks[pick(disks)?];
        // Our driver lets go: after the reset the device owns nothing of ours.
        disk.device()
            .transport_mut()
            .reset()
            .map_err(|e| format!("resetting {} for the peer: {e}", disk.name()))?;
        Ok::<_, String>((disk.location(), disk.writable()))
    })?;

    let started = crate::clock::tsc();
    let mut blk = take_over(location)
        .and_then(|transport| PeerBlk::new(transport).map_err(PeerError::Device))
        .map_err(|e| format!("handing {location} to virtio-drivers: {e}"))?;
    let bringup_us = crate::clock::ticks_to_ns(crate::clock::tsc() - started) / 1000;
    // It polls: the device need not interrupt (as ours in polling mode).
    blk.disable_interrupts();
    if print_setup {
        println!(
            "bench: blk.peer.setup stack=peer location={location} bringup_us={bringup_us} queue_size={} sectors={} read_only={} seconds={seconds:.3}",
            blk.virt_queue_size(),
            blk.capacity(),
            if blk.readonly() { "yes" } else { "no" }
        );
    }
    let mut outcome = Ok(());
    for workload in &WORKLOADS {
        if workload.write && (!writable || blk.readonly()) {
            log::info!(
                "bench: {} skipped on the peer: not a scratch disk",
                workload.name
            );
            continue;
        }
        match measure(&mut blk, workload, seconds) {
            Ok(measured) => report(workload, &measured),
            Err(e) => {
                outcome = Err(format!("{}.peer: {e}", workload.name));
                break;
            }
        }
    }
    // The peer's `Drop` resets the device (status 0) and frees its ring.
    drop(blk);
    outcome?;
    crate::block::with_disks(|disks| {
        let disk = &mut disks[pick(disks)?];
        disk.device()
            .recover()
            .map_err(|e| format!("{}: taking the device back from the peer: {e}", disk.name()))
    })
}

fn report(workload: &Workload, m: &Measured) {
    let seconds = m.ticks as f64 / crate::clock::tsc_hz() as f64;
    let iops = m.requests as f64 / seconds;
    println!(
        "bench: {}.peer stack=peer iops={iops:.0} mib_per_s={:.2} guest_us_per_req={:.2} turn_ticks_per_req={:.1} requests={} seconds={seconds:.3} depth={} depth_wanted={} request_bytes={}",
        workload.name,
        iops * workload.request_bytes as f64 / (1024.0 * 1024.0),
        crate::clock::ticks_to_ns(m.turnaround) as f64 / 1000.0 / m.requests.max(1) as f64,
        m.turnaround as f64 / m.requests.max(1) as f64,
        m.requests,
        m.depth,
        workload.depth,
        workload.request_bytes
    );
}

/// The buffers of one request, which must stay put while it is in flight.
struct Slot {
    request: BlkReq,
    response: BlkResp,
}

/// Runs one workload for `seconds` after the warm-up: keeps up to
/// `workload.depth` requests in flight (fewer if the peer's queue is full
/// earlier), polling the used ring.
fn measure(blk: &mut PeerBlk, workload: &Workload, seconds: f64) -> Result<Measured, String> {
    let sectors_per_request = (workload.request_bytes / SECTOR) as u64;
    let slots_on_disk = blk.capacity() / sectors_per_request;
    if slots_on_disk < workload.depth as u64 {
        return Err("disk too small".into());
    }
    let mut buffer = crate::block::IoBuffer::new(workload.depth * workload.request_bytes)?;
    let mut pieces: Vec<&mut [u8]> = buffer
        .as_mut_slice()
        .chunks_exact_mut(workload.request_bytes)
        .collect();
    let mut slots: Vec<Slot> = (0..workload.depth)
        .map(|_| Slot {
            request: BlkReq::default(),
            response: BlkResp::default(),
        })
        .collect();
    let mut piece_of_token = vec![usize::MAX; usize::from(blk.virt_queue_size())];
    let mut rng = Rng::new(0xbe9c4);
    let mut sequential = 0u64;
    let mut next_block = || {
        let slot = if workload.random {
            rng.below(slots_on_disk)
        } else {
            let slot = sequential % slots_on_disk;
            sequential += 1;
            slot
        };
        (slot * sectors_per_request) as usize
    };

    // Fill the queue: as many as the workload wants and the queue holds.
    let mut in_flight = 0usize;
    for piece in 0..workload.depth {
        // SAFETY: the slot and the piece of the buffer belong to this
        // request alone until its completion is collected below; the
        // buffer and slots outlive every request (they are leaked, never
        // freed, if a request is left in flight).
        match unsafe {
            submit(
                blk,
                workload,
                next_block(),
                &mut slots[piece],
                &mut *pieces[piece],
            )
        } {
            Ok(token) => {
                record(&mut piece_of_token, token, piece)?;
                in_flight += 1;
            }
            Err(virtio_drivers::Error::QueueFull) if in_flight > 0 => break,
            Err(e) => return Err(format!("first submissions: {e}")),
        }
    }
    let depth = in_flight;

    let hz = crate::clock::tsc_hz();
    let duration = (seconds * hz as f64) as u64;
    let give_up_at = crate::clock::tsc()
        .saturating_add(duration)
        .saturating_add(STUCK_AFTER_SECONDS.saturating_mul(hz));
    let mut completed = 0u64;
    let mut start: Option<(u64, u64)> = None;
    let mut stop_at = u64::MAX;
    let mut outcome = Ok(());
    let mut turnaround = 0u64;
    while in_flight > 0 {
        let turn_started = crate::clock::tsc();
        let Some(token) = blk.peek_used() else {
            if crate::clock::tsc() > give_up_at {
                outcome = Err(format!(
                    "{completed} requests done, then the device went quiet"
                ));
                break;
            }
            core::hint::spin_loop();
            continue;
        };
        let piece = match piece_of_token.get(usize::from(token)).copied() {
            Some(piece) if piece < slots.len() => piece,
            _ => {
                outcome = Err(format!("the device completed unknown token {token}"));
                break;
            }
        };
        piece_of_token[usize::from(token)] = usize::MAX;
        let slot = &mut slots[piece];
        // SAFETY: the same request, buffer and response that were submitted
        // with this token (recorded in `piece_of_token`).
        let result = unsafe {
            if workload.write {
                blk.complete_write_blocks(token, &slot.request, &*pieces[piece], &mut slot.response)
            } else {
                blk.complete_read_blocks(
                    token,
                    &slot.request,
                    &mut *pieces[piece],
                    &mut slot.response,
                )
            }
        };
        in_flight -= 1;
        if let Err(e) = result {
            outcome = Err(format!("request failed: {e}"));
            break;
        }
        completed += 1;
        let now = crate::clock::tsc();
        if start.is_none() && completed >= WARMUP_REQUESTS {
            start = Some((now, completed));
            stop_at = now.saturating_add(duration);
        }
        if now >= stop_at {
            continue; // drain
        }
        // SAFETY: as for the first submissions; this piece's previous
        // request was just completed.
        match unsafe {
            submit(
                blk,
                workload,
                next_block(),
                &mut slots[piece],
                &mut *pieces[piece],
            )
        } {
            Ok(token) => {
                if let Err(e) = record(&mut piece_of_token, token, piece) {
                    outcome = Err(e);
                    break;
                }
                in_flight += 1;
            }
            Err(e) => {
                outcome = Err(format!("resubmitting: {e}"));
                break;
            }
        }
        if start.is_some() {
            turnaround += crate::clock::tsc() - turn_started;
        }
    }
    let end = crate::clock::tsc();
    if in_flight > 0 {
        // Requests are left in the device's hands and the peer offers no
        // way to take them back short of dropping the driver: the device
        // may still write into these buffers, so they are leaked rather
        // than handed back to the allocator. Only a failed run gets here.
        log::warn!("bench: peer: {in_flight} request(s) left in flight; leaking their buffers");
        drop(pieces);
        core::mem::forget(buffer);
        core::mem::forget(slots);
    }
    outcome?;
    let (started, before) = start.ok_or("the run ended during the warm-up")?;
    Ok(Measured {
        requests: completed - before,
        ticks: end - started,
        depth,
        turnaround,
    })
}

/// Notes which piece of the buffer the request `token` uses.
fn record(piece_of_token: &mut [usize], token: u16, piece: usize) -> Result<(), String> {
    match piece_of_token.get_mut(usize::from(token)) {
        Some(entry) => {
            *entry = piece;
            Ok(())
        }
        None => Err(format!("the peer returned token {token} beyond its queue")),
    }
}

/// Submits one request of the workload at `block` (in 512-byte sectors).
///
/// # Safety
///
/// `slot` and `buffer` must stay valid and untouched until the request's
/// completion has been collected (or the device reset).
unsafe fn submit(
    blk: &mut PeerBlk,
    workload: &Workload,
    block: usize,
    slot: &mut Slot,
    buffer: &mut [u8],
) -> virtio_drivers::Result<u16> {
    // SAFETY: passed on from the caller.
    unsafe {
        if workload.write {
            blk.write_blocks_nb(block, &mut slot.request, buffer, &mut slot.response)
        } else {
            blk.read_blocks_nb(block, &mut slot.request, buffer, &mut slot.response)
        }
    }
}
