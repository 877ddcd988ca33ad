//! # Device initialisation (virtio 1.2 §3.1.1, legacy §3.1.2)
//!
//! Every virtio device is brought up with the same sequence, whatever the
//! transport; only the device-specific setup in step 7 differs:
//!
//! 1. Reset the device (write 0 to status) and wait until status reads 0.
//! 2. Set ACKNOWLEDGE: the guest has noticed the device.
//! 3. Set DRIVER: the guest knows how to drive it.
//! 4. Read the device's feature bits.
//! 5. Write the subset the driver accepts ([`crate::features::negotiate`]).
//! 6. Set FEATURES_OK, then re-read status: if FEATURES_OK is not there, the
//!    device refused the subset. (Legacy interfaces have no FEATURES_OK and
//!    skip this step, §3.1.2.)
//! 7. Device-specific setup: queues, MSI-X vectors, reading configuration.
//! 8. Set DRIVER_OK: the device is live.
//!
//! If anything fails on the way, the driver sets FAILED and gives up.
//!
//! ```text
//!                 write 0            +ACK              +DRIVER
//!  [any] ──reset──▶ [0] ──────────▶ [ACK] ──────────▶ [ACK|DRIVER]
//!                                                         │ read features,
//!                                                         │ write accepted
//!                                     legacy: skip ┌──────┴──────┐ +FEATURES_OK
//!                                                  │             ▼
//!                                                  │   [ACK|DRIVER|FEATURES_OK]
//!                                                  │             │ re-read status:
//!                                                  │             │ FEATURES_OK gone? ──▶ +FAILED
//!                                                  ▼             ▼
//!                                          queue setup (DeviceInit::transport)
//!                                                         │ +DRIVER_OK
//!                                                         ▼
//!                                              [... | DRIVER_OK]  (live)
//!                         any error on the way ──▶ [... | FAILED]
//!                         device sets DEVICE_NEEDS_RESET ──▶ error to the caller
//! ```
//!
//! [`begin`] runs steps 1-6 and returns a [`DeviceInit`] that lends the
//! transport out for step 7; [`DeviceInit::finish`] is step 8. Dropping a
//! `DeviceInit` without finishing (an error in step 7 returned with `?`)
//! sets FAILED, so no path leaves a half-initialised device looking healthy.

use core::fmt;

use crate::features::{self, FeatureNames};
use crate::transport::{DeviceStatus, Transport, TransportError};

/// What can stop initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// A transport operation failed (reset timeout, ...).
    Transport(TransportError),
    /// A modern transport whose device does not offer VERSION_1 (§6.1).
    Version1NotOffered {
        /// What it offered.
        offered: u64,
    },
    /// The device cleared FEATURES_OK: it cannot work with the accepted subset.
    FeaturesRefused {
        /// The subset that was written.
        accepted: u64,
        /// The status read back.
        status: DeviceStatus,
    },
    /// The device set DEVICE_NEEDS_RESET.
    DeviceNeedsReset {
        /// The status read back.
        status: DeviceStatus,
    },
}

impl From<TransportError> for InitError {
    fn from(e: TransportError) -> Self {
        InitError::Transport(e)
    }
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            InitError::Transport(e) => write!(f, "{e}"),
            InitError::Version1NotOffered { offered } => write!(
                f,
                "modern transport but the device does not offer VERSION_1 (features {offered:#x})"
            ),
            InitError::FeaturesRefused { accepted, status } => {
                write!(f, "device refused features {accepted:#x} (status {status})")
            }
            InitError::DeviceNeedsReset { status } => {
                write!(f, "device needs reset (status {status})")
            }
        }
    }
}

/// A device between feature negotiation and DRIVER_OK.
///
/// Use [`DeviceInit::transport`] to set up queues, then call
/// [`DeviceInit::finish`]. Dropping it unfinished marks the device FAILED.
pub struct DeviceInit<'t, T: Transport + ?Sized> {
    transport: &'t mut T,
    features: u64,
    status: DeviceStatus,
    finished: bool,
}

impl<T: Transport + ?Sized> fmt::Debug for DeviceInit<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceInit")
            .field("features", &format_args!("{:#x}", self.features))
            .field("status", &self.status)
            .finish()
    }
}

/// Steps 1-6 with the device driver's supported features; the shared ring
/// features ([`features::SHARED_RING_FEATURES`]) and, on modern transports,
/// VERSION_1 are added.
pub fn begin<T: Transport + ?Sized>(
    transport: &mut T,
    driver_features: u64,
) -> Result<DeviceInit<'_, T>, InitError> {
    begin_with(transport, driver_features, features::SHARED_RING_FEATURES)
}

/// [`begin`] with an explicit set of shared ring features (for example
/// without RING_EVENT_IDX, to compare notification behaviour).
pub fn begin_with<T: Transport + ?Sized>(
    transport: &mut T,
    driver_features: u64,
    shared_features: u64,
) -> Result<DeviceInit<'_, T>, InitError> {
    let location = transport.location();
    let kind = transport.kind();
    log::trace!(
        "{location}: initialising {} device over {kind} (virtio 1.2 §3.1.1)",
        transport.device_type()
    );

    // Step 1: reset.
    if let Err(e) = transport.reset() {
        let status = transport.status() | DeviceStatus::FAILED;
        transport.set_status(status);
        return Err(e.into());
    }
    let mut init = DeviceInit {
        transport,
        features: 0,
        status: DeviceStatus::empty(),
        finished: false,
    };

    // Steps 2 and 3.
    init.add_status(DeviceStatus::ACKNOWLEDGE);
    init.add_status(DeviceStatus::DRIVER);

    // Step 4.
    let device_type = init.transport.device_type();
    let offered = init.transport.device_features();
    log::debug!(
        "{location}: features offered: {}",
        FeatureNames::new(device_type, offered)
    );
    if !kind.is_legacy() && offered & features::VERSION_1 == 0 {
        return Err(init.fail(InitError::Version1NotOffered { offered }));
    }

    // Step 5.
    let accepted = features::negotiate(offered, driver_features, shared_features, kind);
    init.transport.set_driver_features(accepted);
    init.features = accepted;
    log::debug!(
        "{location}: features accepted: {}",
        FeatureNames::new(device_type, accepted)
    );

    // Step 6 (modern only).
    if kind.is_legacy() {
        log::trace!("{location}: legacy interface: no FEATURES_OK step (§3.1.2)");
    } else {
        init.add_status(DeviceStatus::FEATURES_OK);
        let status = init.transport.status();
        log::trace!("{location}: status reads {status} after FEATURES_OK");
        if status.contains(DeviceStatus::DEVICE_NEEDS_RESET) {
            init.status = status;
            return Err(init.fail(InitError::DeviceNeedsReset { status }));
        }
        if !status.contains(DeviceStatus::FEATURES_OK) {
            log::warn!("{location}: device refused the accepted features");
            // FAILED goes on top of what the device reports now.
            init.status = status;
            return Err(init.fail(InitError::FeaturesRefused { accepted, status }));
        }
    }
    Ok(init)
}

impl<'t, T: Transport + ?Sized> DeviceInit<'t, T> {
    fn add_status(&mut self, bit: DeviceStatus) {
        self.status |= bit;
        self.transport.set_status(self.status);
    }

    /// Sets FAILED and hands `error` back.
    fn fail(mut self, error: InitError) -> InitError {
        self.mark_failed();
        error
    }

    fn mark_failed(&mut self) {
        self.finished = true;
        let status = self.status | DeviceStatus::FAILED;
        self.transport.set_status(status);
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The status as this sequence last wrote it.
    pub fn status(&self) -> DeviceStatus {
        self.status
    }

    /// The transport, for step 7 (queues, MSI-X vectors, configuration).
    pub fn transport(&mut self) -> &mut T {
        self.transport
    }

    /// Step 8: sets DRIVER_OK, re-reads the status and returns the negotiated
    /// features, or an error (after setting FAILED) if the device needs a reset.
    pub fn finish(mut self) -> Result<u64, InitError> {
        self.add_status(DeviceStatus::DRIVER_OK);
        let status = self.transport.status();
        if status.contains(DeviceStatus::DEVICE_NEEDS_RESET) {
            return Err(self.fail(InitError::DeviceNeedsReset { status }));
        }
        self.finished = true;
        log::trace!(
            "{}: device is live (status {status})",
            self.transport.location()
        );
        Ok(self.features)
    }

    /// Gives up: sets FAILED (what dropping an unfinished `DeviceInit` does too).
    pub fn abort(mut self) {
        self.mark_failed();
    }
}

impl<T: Transport + ?Sized> Drop for DeviceInit<'_, T> {
    fn drop(&mut self) {
        if !self.finished {
            log::warn!(
                "{}: initialisation abandoned before DRIVER_OK",
                self.transport.location()
            );
            self.mark_failed();
        }
    }
}

/// Checks a running device: DEVICE_NEEDS_RESET (§2.1.1) is an error the caller sees.
pub fn check_device_status<T: Transport + ?Sized>(transport: &T) -> Result<(), InitError> {
    let status = transport.status();
    if status.contains(DeviceStatus::DEVICE_NEEDS_RESET) {
        Err(InitError::DeviceNeedsReset { status })
    } else {
        Ok(())
    }
}
