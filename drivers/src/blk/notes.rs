//! How the block core narrates a request at trace level: its sectors, its
//! segment list, the used length and the result (virtio 1.2 §5.2.6). Only
//! formatting; nothing here touches the device.

use core::fmt;

use super::core::Job;
use super::request::WRITE_ZEROES_FLAG_UNMAP;
use super::{RequestError, SECTOR_SIZE};
use crate::queue::Segment;

/// Formats ", N sectors" for a job (trace only).
pub(super) struct SectorsNote<'a, 'b>(pub(super) &'a Job<'b>);

impl fmt::Display for SectorsNote<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self.0 {
            Job::Data { bytes, .. } => write!(f, ", {} sector(s)", bytes / SECTOR_SIZE),
            Job::Range { sectors, flags, .. } => {
                write!(f, ", {sectors} sector(s)")?;
                if flags & WRITE_ZEROES_FLAG_UNMAP != 0 {
                    f.write_str(", UNMAP")?;
                }
                Ok(())
            }
            Job::Command { .. } => Ok(()),
        }
    }
}

/// Formats a segment list as `16 R + 4096 W + 1 W` (trace only).
pub(super) struct SegmentsNote<'a>(pub(super) &'a [Segment]);

impl fmt::Display for SegmentsNote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" + ")?;
            }
            write!(f, "{} {}", s.len, if s.device_writable { "W" } else { "R" })?;
        }
        Ok(())
    }
}

/// Formats the used length, or why there is none (trace only).
pub(super) struct UsedNote<'a>(pub(super) &'a Result<u32, RequestError>);

impl fmt::Display for UsedNote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(len) => write!(f, "{len}"),
            Err(RequestError::BadLength { written, expected }) => {
                write!(f, "{written} (more than the {expected} writable bytes)")
            }
            Err(e) => write!(f, "? ({e})"),
        }
    }
}

/// Formats a request's result (trace only).
pub(super) struct ResultNote<'a>(pub(super) &'a Result<(), RequestError>);

impl fmt::Display for ResultNote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(()) => f.write_str("ok"),
            Err(e) => write!(f, "failed: {e}"),
        }
    }
}
