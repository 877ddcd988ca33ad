//! Fuzz target `pci_caps`: a virtio-pci function (the platform model in
//! [`crate::models::pci`]) whose capability list the bytes rewrite: the
//! status bit and pointer that start it, the next pointers, and the body
//! of every capability, including the virtio vendor capabilities (BAR,
//! offset, length, notify multiplier; virtio 1.2 §4.1.4) and MSI-X
//! (PCI 3.0 §6.8.2). Sometimes a few bytes are changed in QEMU's layout,
//! sometimes the whole area after the header is replaced.
//!
//! The bus is then enumerated, the list walked, the MSI-X capability
//! parsed and the function probed as a modern and as a legacy transport;
//! a transport that comes out of it is used (features, queue sizes,
//! configuration reads). Errors are expected; panics, hangs and leaks are
//! failures.

use drivers::pci::msix::MsixCapability;
use drivers::pci::{self, capability_list};
use drivers::transport::pci::{probe_with, TransportPreference};
use drivers::transport::Transport;

use super::Input;
use crate::host_hal::{port_io_config, HostHal};
use crate::models::pci::{
    attach, virtio_modern, virtio_transitional, Attach, PciPlatform, PlatformLayout,
};
use crate::models::test_windows;
use crate::models::virtio::{ModernLayout, VirtioCore};

/// PCI capability lists through a hostile function (see the module documentation).
pub fn pci_caps(data: &[u8]) {
    super::begin();
    let mut input = Input::new(data);
    let core = VirtioCore::new(1, 0x101_30bf_8024, 3, 16, vec![0; 16]).shared();
    let mut function = if input.bool() {
        virtio_modern(&core, ModernLayout::default())
    } else {
        virtio_transitional(0x1000, &core, ModernLayout::default())
    };
    let mode = input.u8();
    if mode & 1 != 0 {
        function.config[6] ^= 0x10;
    }
    if mode & 2 != 0 {
        function.config[0x34] = input.u8();
    }
    if mode & 4 != 0 {
        // The whole capability area, from the bytes.
        let area = input.bytes(192);
        function.config[0x40..0x40 + area.len()].copy_from_slice(area);
    }
    // Then single bytes anywhere in the capability area.
    while !input.is_empty() {
        let at = 0x40 + usize::from(input.u8()) % 0xc0;
        function.config[at] = input.u8();
    }
    let platform = PciPlatform::new();
    platform.borrow_mut().add(Attach::Root, 3, 0, function);
    attach(&platform, &PlatformLayout::default());

    let access = port_io_config();
    if let Ok(functions) = pci::enumerate(&access, &test_windows()) {
        for function in &functions {
            let _ = capability_list(&access, function.address);
            let _ = MsixCapability::find(&access, function);
            for preference in [
                TransportPreference::PreferModern,
                TransportPreference::ForceLegacy,
            ] {
                if let Ok(mut transport) = probe_with::<HostHal, _>(&access, function, preference) {
                    let _ = transport.device_features();
                    let _ = transport.max_queue_size(0);
                    let mut buf = [0u8; 8];
                    let _ = transport.read_config(0, &mut buf);
                }
            }
        }
    }
    drop(platform);
    drop(core);
    super::end_without_leaks("pci_caps");
}
