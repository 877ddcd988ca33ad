//! # Which MSI-X entry each event uses (virtio 1.2 §4.1.4.3, §4.1.5.1.2)
//!
//! With MSI-X a virtio-pci device sends one message per *event*: the
//! configuration change, and each queue's used buffers. The driver decides
//! which table entry each event uses by writing entry numbers into
//! `config_msix_vector` and `queue_msix_vector`. [`MsixLayout`] is that
//! decision, made from the table size alone; [`EntryUse`] is what the
//! interrupt code needs per entry to give it a CPU vector. Writing the
//! numbers into the device at the right moment is
//! [`super::MsixRouted`]'s job (`routed.rs`).

use super::queue_set::QueueSet;

/// Which MSI-X table entry each event of one device uses.
///
/// The rule (the one Linux's virtio-pci uses too) depends only on the table
/// size, so it can be applied queue by queue while the device is set up:
///
/// - the configuration-change event: entry 0;
/// - queue `q`: entry `1 + q` when the table has room for it, else the
///   remaining entries `1..size` are shared round robin (`1 + q % (size - 1)`);
/// - a one-entry table: everything on entry 0.
///
/// QEMU's tables: blk 2 entries (config, queue 0), net 4 (config, rx, tx,
/// ctrl), virtio-serial 2 (config, and one shared by all its queues).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    table_size: u16,
}

impl MsixLayout {
    /// The layout for a table of `table_size` entries (at least 1).
    pub const fn new(table_size: u16) -> Self {
        MsixLayout {
            table_size: if table_size == 0 { 1 } else { table_size },
        }
    }

    /// Entries in the table.
    pub const fn table_size(&self) -> u16 {
        self.table_size
    }

    /// The entry of the configuration-change event.
    pub const fn config_entry(&self) -> u16 {
        0
    }

    /// The entry of queue `queue`.
    pub const fn queue_entry(&self, queue: u16) -> u16 {
        if self.table_size == 1 {
            0
        } else {
            1 + queue % (self.table_size - 1)
        }
    }

    /// Whether queue `queue` has an entry to itself among `queues`.
    pub fn queue_has_own_entry(&self, queue: u16, queues: QueueSet) -> bool {
        let entry = self.queue_entry(queue);
        entry != self.config_entry()
            && queues
                .iter()
                .filter(|&q| self.queue_entry(q) == entry)
                .count()
                == 1
    }

    /// The queues among `queues` that use `entry`.
    pub fn queues_on(&self, entry: u16, queues: QueueSet) -> QueueSet {
        let mut on = QueueSet::EMPTY;
        for q in queues.iter().filter(|&q| self.queue_entry(q) == entry) {
            on.insert(q);
        }
        on
    }

    /// The entries used by the configuration event and `queues`, each with
    /// the queues on it and whether the configuration event is on it, lowest
    /// entry first: what the interrupt code needs a CPU vector for.
    pub fn entries(&self, queues: QueueSet) -> impl Iterator<Item = EntryUse> + '_ {
        (0..self.table_size).filter_map(move |entry| {
            let on = self.queues_on(entry, queues);
            let config = entry == self.config_entry();
            (config || !on.is_empty()).then_some(EntryUse {
                entry,
                queues: on,
                config,
            })
        })
    }
}

/// One MSI-X table entry in use: by which queues, and the configuration event or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryUse {
    /// The table entry.
    pub entry: u16,
    /// The queues whose interrupts it carries.
    pub queues: QueueSet,
    /// Whether it carries the configuration-change event.
    pub config: bool,
}
