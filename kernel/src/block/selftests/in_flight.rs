//! Block self-tests with many requests in flight at once: every queue
//! depth up to the ring's size through the non-blocking core (submit, then
//! collect in whatever order the device used them, virtio 1.2 §2.7.13-14,
//! §5.2.6), on registered DMA buffers. Split from `selftests/mod.rs`, whose
//! helpers (scratch disks, patterns, seeds) it uses.

use super::*;

pub(super) fn test_queue_depths() -> Result<(), String> {
    let base = base_seed();
    for_each_scratch("queue depths", |disk| {
        let queue_size = u64::from(disk.device().queue_size(0).unwrap_or(0));
        // A one-sector request is three descriptors (header, data, status):
        // one ring slot through an indirect table, three without.
        let indirect = disk.device().features() & drivers::features::RING_INDIRECT_DESC != 0;
        let deepest = if indirect { queue_size } else { queue_size / 3 };
        if deepest == 0 || 2 * deepest > QD_AREA {
            return Err(format!(
                "queue of {queue_size} descriptors: cannot test depth {deepest}"
            ));
        }
        let mut depths = Vec::new();
        let mut depth = 1;
        while depth < deepest {
            if workload() == Workload::Full || depth == 1 {
                depths.push(depth);
            }
            depth *= 2;
        }
        depths.push(deepest);
        let mut sector = disk.capacity_sectors() / 2;
        let mut rng = Rng::new(pattern::derive_seed(base, TAG_CHOICES + 2));
        for (i, &depth) in depths.iter().enumerate() {
            let seed = pattern::derive_seed(base, TAG_DEPTH + i as u64);
            let full = depth == deepest;
            at_depth(disk, sector, depth, seed, full, i % 2 == 1, &mut rng)
                .map_err(|e| format!("depth {depth}: {e}"))?;
            sector += depth;
        }
        log::info!(
            "block: {}: depths {:?} of {queue_size} descriptors (indirect {}), completed in any order",
            disk.name(),
            depths,
            if indirect { "on" } else { "off" }
        );
        Ok(())
    })
}

/// Writes `depth` one-sector requests (in a shuffled order, all in flight
/// at once; under one notification when `batch`), collects them, then reads
/// them back the same way and compares. With `full`, one more request must
/// be refused with `QueueFull` while they are in flight.
fn at_depth(
    disk: &mut Disk,
    first: u64,
    depth: u64,
    seed: u64,
    full: bool,
    batch: bool,
    rng: &mut Rng,
) -> Result<(), String> {
    let bytes = depth as usize * SECTOR;
    let mut data = IoBuffer::new(bytes)?;
    pattern::fill(seed, first * SECTOR as u64, data.as_mut_slice());
    let crc = pattern::crc32(data.as_slice());
    let mut order: Vec<u64> = (0..depth).collect();
    rng.shuffle(&mut order);
    in_flight_together(disk, first, &order, data.as_mut_slice(), true, full, batch)?;
    announce_wrote(disk, first, depth, seed, crc);
    let mut back = IoBuffer::new(bytes)?;
    back.as_mut_slice().fill(0xa5);
    rng.shuffle(&mut order);
    in_flight_together(disk, first, &order, back.as_mut_slice(), false, full, batch)?;
    check_pattern(back.as_slice(), seed, first)
}

/// Submits one one-sector request per entry of `order` (sector `first +
/// entry`, buffer sector `entry` of `buffer`) without collecting anything,
/// then collects every completion. Each sector travels in its own
/// registered DMA buffer (copied from `buffer` for writes, back into it for
/// reads). On any failure with requests still in flight the device is reset
/// (`recover`), which gives the buffers back.
fn in_flight_together(
    disk: &mut Disk,
    first: u64,
    order: &[u64],
    buffer: &mut [u8],
    write: bool,
    full: bool,
    batch: bool,
) -> Result<(), String> {
    // One buffer per sector, and one more for the full-queue probe.
    let mut pieces: Vec<BufferId> = Vec::new();
    let mut registered = Ok(());
    for sector in buffer.chunks_exact(SECTOR).chain([&[0u8; SECTOR][..]]) {
        match DmaBuffer::<KernelHal>::from_bytes(disk.location().dma_owner(), sector) {
            Ok(dma) => match disk.device().register_buffer(dma) {
                Ok(id) => pieces.push(id),
                Err(_) => registered = Err(String::from("buffer table full")),
            },
            Err(e) => registered = Err(format!("buffer: {e}")),
        }
        if registered.is_err() {
            break;
        }
    }
    let outcome = registered
        .and_then(|()| submit_and_collect(disk, first, order, &pieces, write, full, batch));
    if disk.device().in_flight() > 0 {
        log::warn!(
            "block: {}: requests left in flight; resetting the device",
            disk.name()
        );
        let _ = disk.device().recover();
    }
    for (i, &id) in pieces.iter().enumerate() {
        if let (false, Some(dst), Some(src)) = (
            write,
            buffer.get_mut(i * SECTOR..(i + 1) * SECTOR),
            disk.device().buffer(id),
        ) {
            dst.copy_from_slice(src);
        }
        drop(disk.device().unregister_buffer(id));
    }
    outcome
}

fn submit_and_collect(
    disk: &mut Disk,
    first: u64,
    order: &[u64],
    pieces: &[BufferId],
    write: bool,
    full: bool,
    batch: bool,
) -> Result<(), String> {
    let depth = order.len();
    let mut wait = disk.new_wait();
    let device = disk.device();
    let queue_size = usize::from(device.queue_size(0).unwrap_or(0));
    let notifications_before = device.stats().ring.notifications;
    // Which entry of `order` each pool slot carries (slots are unique in flight).
    let mut entry_of_slot: Vec<Option<u64>> = vec![None; queue_size];
    let mut tokens: Vec<BlkToken> = Vec::with_capacity(depth);
    if batch {
        device.start_batch();
    }
    for &entry in order {
        let piece = core::slice::from_ref(&pieces[entry as usize]);
        let sector = first + entry;
        let submitted = if write {
            device.submit_write(sector, piece)
        } else {
            device.submit_read(sector, piece)
        };
        match submitted {
            Ok(token) => {
                entry_of_slot[token.slot()] = Some(entry);
                tokens.push(token);
            }
            Err(e) => {
                if batch {
                    device.finish_batch();
                }
                return Err(format!(
                    "submitting request {} of {depth}: {e}",
                    tokens.len() + 1
                ));
            }
        }
    }
    if batch {
        device.finish_batch();
    }
    if device.in_flight() != depth {
        return Err(format!(
            "{} requests in flight, expected {depth}",
            device.in_flight()
        ));
    }
    if full {
        // The probe's own buffer (the others are all lent).
        let probe = &pieces[pieces.len() - 1..];
        let extra = device.submit_read(first, probe);
        if extra != Err(BlkError::QueueFull) {
            return Err(format!(
                "request {} on a full queue of {queue_size} returned {extra:?}, expected QueueFull",
                depth + 1
            ));
        }
    }
    if batch {
        let sent = device.stats().ring.notifications - notifications_before;
        if sent > 1 {
            return Err(format!(
                "one batch of {depth} requests sent {sent} notifications"
            ));
        }
    }
    let mut seen = vec![false; depth];
    let mut collected = 0;
    while collected < depth {
        match device.poll() {
            Ok(Some(completion)) => {
                let entry = entry_of_slot
                    .get(completion.token.slot())
                    .copied()
                    .flatten()
                    .ok_or_else(|| format!("completion for unknown token {}", completion.token))?;
                if !tokens.contains(&completion.token) || seen[entry as usize] {
                    return Err(format!(
                        "completion for {} twice or never sent",
                        completion.token
                    ));
                }
                seen[entry as usize] = true;
                entry_of_slot[completion.token.slot()] = None;
                collected += 1;
                if let Err(e) = completion.result {
                    return Err(format!(
                        "{} of sector {}: {e}",
                        if write { "write" } else { "read" },
                        completion.sector
                    ));
                }
                if completion.sector != first + entry {
                    return Err(format!(
                        "completion says sector {}, the request was for {}",
                        completion.sector,
                        first + entry
                    ));
                }
            }
            Ok(None) => {
                let waited = wait_until_used(
                    &mut wait,
                    device,
                    |d| d.enable_interrupts(),
                    |d| d.disable_interrupts(),
                );
                if let Err(timeout) = waited {
                    return Err(format!(
                        "{collected} of {depth} completions, then the wait gave up ({timeout})"
                    ));
                }
            }
            Err(e) => return Err(format!("poll: {e}")),
        }
    }
    Ok(())
}
