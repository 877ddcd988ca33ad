//! Receive-side scaling (virtio 1.2 §5.1.6.5.7.1, VIRTIO_NET_F_RSS): the
//! driver (`drivers::net::rss`) against the device model in
//! `tests::net_model`: the RSS_CONFIG command byte for byte, the control
//! queue behind the pairs with RSS alone, and the fall-backs (a device whose
//! limits break §5.1.4.1, a device that rejects the configuration).

use drivers::net::rss::{self, HASH_KEY, INDIRECTION_TABLE_LEN};
use drivers::net::{NetDevice, NetError, NetOptions};
use drivers::transport::Transport;
use tests::host_hal::HostHal;
use tests::models::trace_logging;
use tests::net_model::{bits, net_config_rss, NetModel, StepModel, QEMU_MODERN_FEATURES};

type Net<T> = NetDevice<HostHal, T>;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// IPv4, TCPv4, UDPv4, IPv6, TCPv6, UDPv6 and the three _EX types: what QEMU 7.2 supports.
const QEMU_HASH_TYPES: u32 = 0x1ff;

fn rss_model(offer: u64, pairs: u16, key: u8, table: u16) -> NetModel {
    trace_logging();
    NetModel::with_queue_pairs(
        offer,
        net_config_rss(MAC, pairs, key, table, QEMU_HASH_TYPES),
        16,
        pairs,
    )
}

fn bring_up(model: &mut NetModel, pairs: u16) -> Net<impl Transport> {
    let options = NetOptions {
        max_queue_pairs: pairs,
        rx_queue_size: 16,
        tx_queue_size: 16,
        ..NetOptions::default()
    };
    let net = Net::with_options(model.mmio(2), options).expect("bring-up");
    model.attach_queues();
    net
}

/// (class, command) of every control command the device saw.
fn commands(model: &NetModel) -> Vec<(u8, u8)> {
    model
        .commands
        .iter()
        .map(|c| (c.class, c.command))
        .collect()
}

#[test]
fn rss_config_goes_out_with_its_exact_bytes_and_spreads_over_every_pair() {
    let mut model = rss_model(QEMU_MODERN_FEATURES | bits::MQ | bits::RSS, 4, 40, 128);
    let mut net = bring_up(&mut model, 4);
    assert_ne!(model.negotiated() & bits::RSS, 0, "RSS accepted");
    assert_eq!(net.start_multiqueue(&mut StepModel::new(&mut model)), Ok(4));
    assert!(net.rss_active());
    assert_eq!(
        commands(&model),
        vec![(4, 1)],
        "RSS_CONFIG instead of VQ_PAIRS_SET"
    );
    let data = &model.commands[0].data;
    let mut expected = Vec::new();
    expected.extend_from_slice(&0x3fu32.to_le_bytes()); // IPv4/6 with TCP and UDP
    expected.extend_from_slice(&127u16.to_le_bytes()); // mask
    expected.extend_from_slice(&0u16.to_le_bytes()); // unclassified: receiveq1
    for i in 0..128u16 {
        expected.extend_from_slice(&(i % 4).to_le_bytes());
    }
    expected.extend_from_slice(&4u16.to_le_bytes()); // max_tx_vq
    expected.push(40);
    expected.extend_from_slice(&HASH_KEY);
    assert_eq!(data, &expected);
    let seen = model.rss.clone().expect("the model accepted it");
    assert_eq!(seen.table.len(), usize::from(INDIRECTION_TABLE_LEN));
    assert_eq!((seen.max_tx_vq, seen.key.len()), (4, 40));
    assert_eq!(model.active_pairs, 4);
}

#[test]
fn a_device_whose_rss_limits_break_the_spec_gets_vq_pairs_set() {
    for (key, table) in [(20u8, 128u16), (40, 64)] {
        let mut model = rss_model(QEMU_MODERN_FEATURES | bits::MQ | bits::RSS, 4, key, table);
        let mut net = bring_up(&mut model, 4);
        assert_eq!(net.start_multiqueue(&mut StepModel::new(&mut model)), Ok(4));
        assert!(!net.rss_active(), "key {key}, table {table}");
        assert_eq!(commands(&model), vec![(4, 0)]);
        assert_eq!(model.active_pairs, 4);
    }
}

#[test]
fn a_rejected_rss_config_is_followed_by_vq_pairs_set() {
    let mut model = rss_model(QEMU_MODERN_FEATURES | bits::MQ | bits::RSS, 4, 40, 128);
    model.rss_ack = Some(1);
    let mut net = bring_up(&mut model, 4);
    assert_eq!(net.start_multiqueue(&mut StepModel::new(&mut model)), Ok(4));
    assert!(!net.rss_active());
    assert_eq!(commands(&model), vec![(4, 1), (4, 0)]);
    assert_eq!(model.active_pairs, 4);
    assert!(model.rss.is_none());
}

#[test]
fn rss_without_mq_moves_the_control_queue_and_a_refusal_leaves_one_pair() {
    // §5.1.2: RSS alone also puts the control queue at 2 * max_virtqueue_pairs.
    let mut model = rss_model(QEMU_MODERN_FEATURES | bits::RSS, 2, 40, 128);
    let mut net = bring_up(&mut model, 2);
    assert_eq!(model.negotiated() & bits::MQ, 0);
    assert!(model.has_queue(4), "control queue at 4");
    assert_eq!(net.queue_indices().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    model.rss_ack = Some(1);
    assert_eq!(
        net.start_multiqueue(&mut StepModel::new(&mut model)),
        Err(NetError::NotNegotiated("VIRTIO_NET_F_MQ")),
        "no VQ_PAIRS_SET without MQ"
    );
    assert_eq!(net.active_queue_pairs(), 1);
    assert_eq!(commands(&model), vec![(4, 1)]);
}

#[test]
fn the_rss_data_is_refused_for_unusable_limits_and_no_pairs() {
    let good = drivers::net::config::RssLimits {
        max_key_size: 40,
        max_indirection_table_length: 128,
        supported_hash_types: rss::hash_type::TCPV4,
    };
    let data = rss::rss_config_data(3, &good).expect("usable");
    assert_eq!(&data[..4], &rss::hash_type::TCPV4.to_le_bytes());
    assert_eq!(data.len(), 4 + 2 + 2 + 256 + 2 + 1 + 40);
    assert!(rss::rss_config_data(0, &good).is_none());
    let no_types = drivers::net::config::RssLimits {
        supported_hash_types: 1 << 6,
        ..good
    };
    assert!(rss::unusable(&no_types).is_some());
    assert!(rss::rss_config_data(3, &no_types).is_none());
}
