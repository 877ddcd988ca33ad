//! One smoltcp interface per card: its sockets, its DHCP client, and the
//! polling round that drives them all.
//!
//! A poll of one card ([`poll_card`]) is:
//!
//! 1. `Interface::poll`: smoltcp takes received frames (through
//!    [`super::nic::Phy`], in place), runs ARP, IP, TCP, DHCP, and sends what
//!    its sockets want to send (built in place in transmit buffers);
//! 2. the DHCP client's events: a lease configures the interface's address
//!    and default route and is logged once; losing it clears them;
//! 3. the services ([`super::services`]): echo what arrived on port 7,
//!    answer HTTP requests on port 80 (the page needs every card's state,
//!    so it is rendered between card polls, in [`poll_all`]);
//! 4. a second `Interface::poll`, so the services' replies go out in the
//!    same round;
//! 5. `Nic::flush`: one publish per queue for everything the round queued,
//!    and a notification only if the device asked for one.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Duration;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};

use super::nic::Nic;
use super::services::{ServiceCounters, Services};
use super::{http, now, MAX_SLEEP_INTERRUPT, MAX_SLEEP_POLLED};

/// What an interface is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Normal boot: DHCP and the servers.
    Services,
    /// Self-tests: DHCP only; the tests add their own sockets.
    #[cfg(feature = "selftest")]
    SelfTest,
}

/// What DHCP gave a card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Address and prefix.
    pub address: Ipv4Cidr,
    /// Default gateway.
    pub gateway: Option<Ipv4Address>,
    /// DNS servers.
    pub dns: Vec<Ipv4Address>,
}

/// A card's smoltcp state.
pub struct Stack {
    /// The interface.
    pub iface: Interface,
    /// Its sockets.
    pub sockets: SocketSet<'static>,
    /// The DHCP client (`None` with a static address, `net.ip=`).
    dhcp: Option<SocketHandle>,
    /// The current lease, if any.
    pub lease: Option<Lease>,
    /// The servers (normal boot only).
    services: Option<Services>,
}

impl Stack {
    /// The echo and HTTP servers' counters (normal boot only).
    pub fn service_counters(&self) -> Option<[ServiceCounters; 2]> {
        self.services.as_ref().map(|s| s.counters(&self.sockets))
    }
}

/// Gives `nic` an interface with a DHCP client (and, for
/// [`Role::Services`], the servers). Does nothing if it has one.
pub fn attach(nic: &mut Nic, role: Role) {
    if nic.stack.is_some() {
        return;
    }
    let mac = nic.device.mac();
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac.0)));
    // smoltcp draws TCP initial sequence numbers, DHCP transaction ids
    // and ephemeral ports from this seed: from the kernel's entropy source
    // (virtio-rng when there is one, `crate::entropy`).
    config.random_seed = crate::entropy::seed_u64(&nic.name);
    let mut iface = Interface::new(config, &mut nic.phy(), now());
    let mut sockets = SocketSet::new(vec![]);
    let static_address = (nic.name == "net0").then(static_address).flatten();
    let dhcp = match static_address {
        Some(address) => {
            iface.update_ip_addrs(|addrs| {
                let _ = addrs.push(IpCidr::Ipv4(address));
            });
            // Printed whatever the log level, like the DHCP lease line.
            crate::println!("{}: static: address {address}", nic.name);
            None
        }
        None => Some(sockets.add(dhcpv4::Socket::new())),
    };
    let services = (role == Role::Services).then(|| Services::new(&mut sockets));
    nic.stack = Some(Stack {
        iface,
        sockets,
        dhcp,
        lease: None,
        services,
    });
}

/// `net.ip=A.B.C.D/LEN` on the command line: net0's address without DHCP,
/// for a network with no DHCP server (a tap device the tests create). No
/// gateway: only the directly attached network is reachable.
fn static_address() -> Option<Ipv4Cidr> {
    let text = crate::cmdline::get("net.ip")?;
    match text.parse::<Ipv4Cidr>() {
        Ok(cidr) => Some(cidr),
        Err(()) => {
            log::warn!("net.ip={text}: not an IPv4 address with a prefix length; using DHCP");
            None
        }
    }
}

/// Polls every card once (see the module docs). Returns how soon smoltcp
/// wants the next poll (`None`: only when something arrives).
pub fn poll_all(nics: &mut [Nic]) -> Option<Duration> {
    let mut next: Option<Duration> = None;
    for i in 0..nics.len() {
        poll_card(&mut nics[i]);
        // HTTP answers describe every card: made with all of them in view,
        // then handed to this card's server.
        let pending = nics[i]
            .stack
            .as_ref()
            .and_then(|s| s.services.as_ref())
            .map(Services::pending_requests)
            .unwrap_or_default();
        if !pending.is_empty() {
            let answers: Vec<_> = pending
                .into_iter()
                .map(|request| {
                    let bytes = http::respond(&request.answer, nics);
                    (request, bytes)
                })
                .collect();
            let nic = &mut nics[i];
            if let Some(services) = nic.stack.as_mut().and_then(|s| s.services.as_mut()) {
                services.deliver(answers);
            }
            poll_card(nic);
        }
        let nic = &mut nics[i];
        if let Some(stack) = nic.stack.as_mut() {
            let delay = stack.iface.poll_delay(now(), &stack.sockets);
            next = match (next, delay) {
                (Some(a), Some(b)) => Some(if a < b { a } else { b }),
                (a, b) => a.or(b),
            };
        }
    }
    next
}

/// One round for one card (without the HTTP page).
pub fn poll_card(nic: &mut Nic) {
    if nic.device.is_failed() {
        return;
    }
    if nic.check_dma().is_some() {
        // Reposted buffers go back to the device now.
        nic.flush();
    }
    let Some(stack) = nic.stack.as_mut() else {
        return;
    };
    let broken = {
        let mut phy = nic_phy(&mut nic.device, &mut nic.counters);
        stack.iface.poll(now(), &mut phy, &mut stack.sockets);
        phy.broken.take()
    };
    dhcp_events(&nic.name, stack);
    if let Some(services) = stack.services.as_mut() {
        if services.poll(&mut stack.sockets) {
            let mut phy = nic_phy(&mut nic.device, &mut nic.counters);
            stack.iface.poll(now(), &mut phy, &mut stack.sockets);
        }
    }
    nic.flush();
    if let Some(error) = broken {
        nic.recover(error);
    }
    nic.check_config();
}

fn nic_phy<'a>(
    device: &'a mut super::nic::KernelNetDevice,
    counters: &'a mut super::nic::BridgeCounters,
) -> super::nic::Phy<'a> {
    super::nic::Phy::new(device, counters)
}

/// Applies DHCP events to the interface and logs a new lease.
fn dhcp_events(name: &str, stack: &mut Stack) {
    let Some(dhcp) = stack.dhcp else {
        return;
    };
    let event = stack.sockets.get_mut::<dhcpv4::Socket>(dhcp).poll();
    match event {
        None => {}
        Some(dhcpv4::Event::Configured(config)) => {
            let address = config.address;
            stack.iface.update_ip_addrs(|addrs| {
                addrs.clear();
                let _ = addrs.push(IpCidr::Ipv4(address));
            });
            match config.router {
                Some(router) => {
                    let _ = stack.iface.routes_mut().add_default_ipv4_route(router);
                }
                None => {
                    stack.iface.routes_mut().remove_default_ipv4_route();
                }
            }
            let lease = Lease {
                address,
                gateway: config.router,
                dns: config.dns_servers.iter().copied().collect(),
            };
            // Printed whatever the log level: the address is what a person
            // needs to reach the services (docs/contract.md).
            crate::println!(
                "{name}: dhcp: address {} gateway {} dns {}",
                lease.address,
                OptionalAddress(lease.gateway),
                DnsList(&lease.dns)
            );
            stack.lease = Some(lease);
        }
        Some(dhcpv4::Event::Deconfigured) => {
            // smoltcp also reports this once at the start, before any lease.
            if stack.lease.is_some() {
                log::warn!("{name}: dhcp: lease lost");
            }
            stack.iface.update_ip_addrs(|addrs| addrs.clear());
            stack.iface.routes_mut().remove_default_ipv4_route();
            stack.lease = None;
        }
    }
}

/// How long the idle loop may sleep: smoltcp's next timer, capped by how
/// the cards wake the CPU (see [`super::run`]).
pub fn sleep_limit(nics: &[Nic], next: Option<Duration>) -> Duration {
    let cap = if nics.iter().all(Nic::interrupt_driven) {
        MAX_SLEEP_INTERRUPT
    } else {
        MAX_SLEEP_POLLED
    };
    match next {
        Some(next) if next < cap => next,
        _ => cap,
    }
}

struct OptionalAddress(Option<Ipv4Address>);

impl core::fmt::Display for OptionalAddress {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("none"),
        }
    }
}

struct DnsList<'a>(&'a [Ipv4Address]);

impl core::fmt::Display for DnsList<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}
