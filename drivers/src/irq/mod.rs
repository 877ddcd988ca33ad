//! # Interrupts, from the driver's side (virtio 1.2 §2.7.7, §4.1.4.5, §4.1.5.1.2-3, §4.2.2)
//!
//! A device says "I used some of your buffers" (or "my configuration
//! changed") by interrupting. How that reaches the CPU depends on the
//! transport, but what a driver does with it is always the same: note which
//! queues have news, wake whoever waits for them, and let them collect the
//! used entries from the ring. This module holds that shared part, with
//! nothing x86- or kernel-specific in it, so the host tests can drive every
//! path with device models. One file per job, in the order a reader meets
//! them:
//!
//! | file             | what it does                                                   | spec |
//! |------------------|----------------------------------------------------------------|------|
//! | `queue_set.rs`   | [`QueueSet`]: a set of queue indices, one bit each             | §2.6 |
//! | `msix_layout.rs` | [`MsixLayout`]: who gets which MSI-X entry (config on 0, each queue after it, sharing when the table is small) | §4.1.5.1.2 |
//! | `routed.rs`      | [`MsixRouted`]: writes the entry numbers into the device when the spec wants them there (a queue's before it goes live, the config one before DRIVER_OK), through [`crate::transport::TransportWrapper`] | §4.1.4.3.2, §4.1.5.1.2-3 |
//! | `status.rs`      | [`InterruptStatusRegister`]: the ISR byte / InterruptStatus+ACK an interrupt handler reads, a copy of the transport's own mapping | §4.1.4.5, §4.2.2 |
//! | `intx.rs`        | [`intx_line`], [`set_intx_disabled`]: which INTx line firmware routed, and silencing INTx while MSI-X is used | §4.1.4.5, PCI 3.0 §6.2 |
//! | `records.rs`     | [`DeviceInterrupts`]: what handlers record (pending bits, counters), all atomics | §2.7.7 |
//! | `wait.rs`        | [`wait_until_used`] (arm, look again, wait, disarm) and [`InterruptWait`], the [`crate::device::Wait`] that halts until a pending bit is set | §2.7.7 |
//!
//! The CPU side of waiting ([`Idle`]: `cli`, `sti; hlt`) and the interrupt
//! controllers are the kernel's (`kernel/src/virtio/irq.rs`); host tests
//! supply a simulated CPU. The chapter `docs/04-interrupts.md` follows one
//! completion from the used ring through all of this.

mod intx;
mod msix_layout;
mod queue_set;
mod records;
mod routed;
mod status;
mod wait;

pub use intx::{intx_line, pin_name, set_intx_disabled, IntxLine};
pub use msix_layout::{EntryUse, MsixLayout};
pub use queue_set::{QueueSet, MAX_QUEUES};
pub use records::{DeviceInterrupts, InterruptCounters};
pub use routed::{MsixEvent, MsixRejection, MsixRouted};
pub use status::InterruptStatusRegister;
pub use wait::{wait_until_used, Idle, InterruptWait, WaitMode, WaitStats};
