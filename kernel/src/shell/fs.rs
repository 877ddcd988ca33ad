//! The shell's file commands on the virtio-9p mounts (`crate::ninep`):
//! `ls`, `cat`, `sha256`, `write </file> <text>` and `cp <file> <disk>:<lba>`.
//!
//! Paths are full: `/<mount>/dir/file`; quote a name with spaces
//! (`cat "/host/dir one/a b.txt"`, `words.rs`). Errors the server sends come
//! back by their errno name (`error: ENOENT (no such file or directory)`);
//! a path that climbs out of its mount is refused by the driver before
//! anything is sent. `sha256` and `cp` stream: each msize-sized Rread goes
//! into the hash or onto the disk before the next is asked for, so a file
//! of any size works in constant memory.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write as _;

use sha2::{Digest, Sha256};

use super::{Call, CommandResult, Output};
use crate::block;
use crate::ninep;

/// What `cat` prints at most.
const CAT_MAX: usize = 64 * 1024;
/// Bytes `cp` gathers before each disk write (a multiple of the sector).
const CP_CHUNK: usize = 64 * 1024;

/// `ls`: without a path, or `/`, the mounts; else the directory's entries
/// (size and name, directories with a trailing `/`).
pub fn ls(args: &[&str], out: &mut Output) -> CommandResult {
    let path = match args {
        [] | ["/"] => return list_mounts(out),
        [path] => *path,
        _ => return Err("usage: ls [/mount/dir]".into()),
    };
    let entries = ninep::with_mount(path, |mount, inner| {
        let mut wait = mount.wait();
        let attr = mount.device.stat(inner, &mut wait)?;
        if !attr.qid.is_dir() {
            return Ok(Err(attr.size));
        }
        let mut wait = mount.wait();
        mount.device.list(inner, &mut wait).map(Ok)
    })
    .map_err(|e| e.to_string())?;
    match entries {
        Err(size) => {
            let _ = writeln!(out, "{size:>12} {path}");
        }
        Ok(entries) => {
            for entry in &entries {
                let slash = if entry.is_dir { "/" } else { "" };
                let _ = writeln!(out, "{:>12} {}{slash}", entry.size, entry.name);
            }
            let _ = writeln!(out, "({} entries)", entries.len());
        }
    }
    Ok(())
}

fn list_mounts(out: &mut Output) -> CommandResult {
    let mounts = ninep::mounts();
    if mounts.is_empty() {
        return Err("no host folders mounted (attach a virtio-9p device)".into());
    }
    for mount in mounts.iter() {
        let stats = mount.device.stats();
        let _ = writeln!(
            out,
            "/{} from {} (tag {:?}): msize {}, fids open {}, requests {}, read {} B, written {} B{}",
            mount.name,
            mount.location,
            mount.device.mount_tag(),
            mount.device.msize(),
            mount.device.fids_in_use(),
            stats.requests,
            stats.bytes_read,
            stats.bytes_written,
            if mount.device.is_stopped() {
                ", STOPPED"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `cat <file>`: the first [`CAT_MAX`] bytes as text.
pub fn cat(args: &[&str], out: &mut Output) -> CommandResult {
    let [path] = args else {
        return Err("usage: cat <file>".into());
    };
    let mut text = Vec::new();
    let mut more = false;
    ninep::with_mount(path, |mount, inner| {
        let mut wait = mount.wait();
        mount.device.read_file(inner, &mut wait, |chunk| {
            let room = CAT_MAX - text.len();
            text.extend_from_slice(&chunk[..chunk.len().min(room)]);
            more = chunk.len() > room;
            !more && text.len() < CAT_MAX
        })
    })
    .map_err(|e| e.to_string())?;
    let _ = write!(out, "{}", String::from_utf8_lossy(&text));
    if more {
        let _ = writeln!(
            out,
            "\n(first {CAT_MAX} bytes shown; `sha256` reads it all)"
        );
    } else if !text.ends_with(b"\n") && !text.is_empty() {
        let _ = writeln!(out);
    }
    Ok(())
}

/// `sha256 <file>`: the digest in hex, as `sha256sum` prints it, and the size.
pub fn sha256(args: &[&str], out: &mut Output) -> CommandResult {
    let [path] = args else {
        return Err("usage: sha256 <file>".into());
    };
    let mut hasher = Sha256::new();
    let started = crate::clock::uptime_ns();
    let bytes = ninep::with_mount(path, |mount, inner| {
        let mut wait = mount.wait();
        mount.device.read_file(inner, &mut wait, |chunk| {
            hasher.update(chunk);
            true
        })
    })
    .map_err(|e| e.to_string())?;
    let elapsed_ms = (crate::clock::uptime_ns() - started) / 1_000_000;
    let digest = hasher.finalize();
    for byte in digest {
        let _ = write!(out, "{byte:02x}");
    }
    let _ = writeln!(out, "  {path}");
    let _ = writeln!(out, "({bytes} bytes in {elapsed_ms} ms)");
    Ok(())
}

/// `write`: `write </file> <text>` makes `text` and a newline the file's
/// contents (created, or replaced); `write <port> <text>` is the console's
/// (`super::write_port`).
pub fn write(call: &Call<'_>, out: &mut Output) -> CommandResult {
    match call.args {
        [path, words @ ..] if path.starts_with('/') => {
            let mut text = words.join(" ");
            text.push('\n');
            ninep::with_mount(path, |mount, inner| {
                let mut wait = mount.wait();
                mount.device.write_file(inner, text.as_bytes(), &mut wait)
            })
            .map_err(|e| e.to_string())?;
            let _ = writeln!(out, "wrote {} bytes to {path}", text.len());
            Ok(())
        }
        _ => super::write_port(call.line, call.args, out),
    }
}

/// `cp <file> <disk>:<lba>`: the file's bytes onto disk `disk` from sector
/// `lba` (the last sector padded with zeroes). Only scratch disks (serial
/// starting `scratch`), and only if the whole file fits.
pub fn cp(args: &[&str], out: &mut Output) -> CommandResult {
    let [path, target] = args else {
        return Err("usage: cp <file> <disk>:<lba>".into());
    };
    let (disk, lba) = target
        .split_once(':')
        .ok_or("the target is <disk>:<lba>, e.g. vdb:0")?;
    let lba = lba
        .parse::<u64>()
        .map_err(|_| format!("`{lba}` is not a sector number"))?;
    let info = block::with_disk(disk, |d| d.info()).map_err(|e| format!("{disk}: {e}"))?;
    if !info.writable {
        return Err(format!(
            "{disk} is not a writable scratch disk (serial starting `{}`, not read-only): refusing to write",
            block::SCRATCH_PREFIX
        ));
    }
    let capacity = info.capacity_sectors;
    let size = ninep::with_mount(path, |mount, inner| {
        let mut wait = mount.wait();
        mount.device.stat(inner, &mut wait)
    })
    .map_err(|e| e.to_string())?
    .size;
    let sectors = size.div_ceil(block::SECTOR as u64);
    if lba.checked_add(sectors).is_none_or(|end| end > capacity) {
        return Err(format!(
            "{sectors} sectors from {lba} do not fit {disk} ({capacity} sectors)"
        ));
    }
    let mut pending: Vec<u8> = Vec::with_capacity(CP_CHUNK);
    let mut next_lba = lba;
    let mut disk_error: Option<String> = None;
    let mut flush = |pending: &mut Vec<u8>, disk_error: &mut Option<String>| {
        if pending.is_empty() || disk_error.is_some() {
            return;
        }
        let padded = pending.len().next_multiple_of(block::SECTOR);
        pending.resize(padded, 0);
        // On this CPU's queue; scratch disks only (checked above too).
        match block::write(disk, next_lba, pending) {
            Ok(()) => next_lba += (padded / block::SECTOR) as u64,
            Err(e) => *disk_error = Some(e.to_string()),
        }
        pending.clear();
    };
    let copied = ninep::with_mount(path, |mount, inner| {
        let mut wait = mount.wait();
        mount.device.read_file(inner, &mut wait, |mut chunk| {
            while !chunk.is_empty() {
                let n = chunk.len().min(CP_CHUNK - pending.len());
                pending.extend_from_slice(&chunk[..n]);
                chunk = &chunk[n..];
                if pending.len() == CP_CHUNK {
                    flush(&mut pending, &mut disk_error);
                }
            }
            disk_error.is_none()
        })
    })
    .map_err(|e| e.to_string())?;
    flush(&mut pending, &mut disk_error);
    if let Some(error) = disk_error {
        return Err(format!("{disk}: {error}"));
    }
    let _ = writeln!(
        out,
        "copied {copied} bytes from {path} to {disk} sectors {lba}..{}",
        next_lba
    );
    Ok(())
}
