//! The VPC fabric: one namespace that every ENI link plugs into. It answers ARP for the subnet
//! gateways (they are its own addresses, on its loopback) and for every other address it routes (proxy ARP),
//! routes each ENI's private IPs and prefixes to that ENI's link, and enforces EC2's
//! source/destination check with strict reverse-path filtering: a packet entering from an ENI
//! with a source address that ENI does not own has no route back through that ENI and is dropped
//! (and counted in the namespace's `IPReversePathFilter` counter).

use super::netns;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::link::{InfoData, InfoVeth};
use netlink_packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

pub const MTU: u32 = 9001;

fn nl(what: &str, e: rtnetlink::Error) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(mac: &str) -> io::Result<Vec<u8>> {
    let b: Result<Vec<u8>, _> = mac.split(':').map(|h| u8::from_str_radix(h, 16)).collect();
    match b {
        Ok(b) if b.len() == 6 => Ok(b),
        _ => Err(io::Error::other(format!("bad MAC {mac}"))),
    }
}

pub async fn link_index(h: &Handle, name: &str) -> io::Result<u32> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(l.header.index),
        Ok(None) => Err(io::Error::other(format!("link {name} not found"))),
        Err(e) => Err(nl(&format!("looking up {name}"), e)),
    }
}

async fn set_up(h: &Handle, index: u32) -> io::Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| nl("link up", e))
}

/// What [`Fabric::plug`] wires.
pub struct Plug<'a> {
    pub eni_id: &'a str,
    pub fabric_if: &'a str,
    pub node_ns: &'a str,
    pub node_if: &'a str,
    pub mac: &'a str,
    pub primary: Ipv4Addr,
    pub owned: BTreeSet<Ipv4Net>,
    /// EC2's source/destination check (on unless turned off for the ENI).
    pub src_dst_check: bool,
}

struct Plugged {
    link: String,
    index: u32,
    primary: Ipv4Addr,
    routes: BTreeSet<Ipv4Net>,
}

pub struct Fabric {
    pub ns: String,
    h: Handle,
    plugged: HashMap<String, Plugged>,
}

impl Fabric {
    /// Creates the fabric namespace with the router holding every subnet gateway.
    pub async fn create(ns: &str, gateways: &[Ipv4Addr]) -> io::Result<Fabric> {
        netns::create(ns)?;
        for (k, v) in [
            ("net/ipv4/ip_forward", "1"),
            // Per-link strict reverse-path filtering is the source/destination check; `all` stays 0
            // so a link's own value decides (the kernel uses the larger of the two).
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/default/rp_filter", "1"),
            ("net/ipv4/conf/default/proxy_arp", "1"),
            ("net/ipv4/conf/all/send_redirects", "0"),
            ("net/ipv4/conf/default/send_redirects", "0"),
        ] {
            netns::sysctl(ns, k, v)?;
        }
        let h = netns::netlink(ns)?;
        let lo = link_index(&h, "lo").await?;
        set_up(&h, lo).await?;
        // The router's addresses (every subnet gateway) live on loopback: the kernel answers ARP
        // for a local address on any interface.
        for gw in gateways {
            h.address()
                .add(lo, (*gw).into(), 32)
                .execute()
                .await
                .map_err(|e| nl("adding a gateway", e))?;
        }
        Ok(Fabric {
            ns: ns.to_string(),
            h,
            plugged: HashMap::new(),
        })
    }

    /// Plugs an ENI into a node: a veth pair whose node end (`node_if`, the ENI's MAC, MTU 9001)
    /// is created directly in the node namespace, and routes for everything the ENI owns.
    pub async fn plug(&mut self, p: Plug<'_>) -> io::Result<()> {
        let Plug {
            eni_id,
            fabric_if,
            node_ns,
            node_if,
            mac,
            primary,
            owned,
            src_dst_check,
        } = p;
        let ns = std::fs::File::open(netns::path(node_ns))?;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(node_if.to_string())
            .address(parse_mac(mac)?)
            .mtu(MTU)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(fabric_if, "unused")
            .mtu(MTU)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.h
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| nl(&format!("creating {fabric_if}/{node_if}"), e))?;
        let index = match link_index(&self.h, fabric_if).await {
            Ok(i) => i,
            Err(e) => {
                let _ = self.delete_link_named(fabric_if).await;
                return Err(e);
            }
        };
        self.plugged.insert(
            eni_id.to_string(),
            Plugged {
                link: fabric_if.to_string(),
                index,
                primary,
                routes: BTreeSet::new(),
            },
        );
        // Anything failing from here on unplugs again, so no half-wired link stays behind.
        if let Err(e) = self
            .wire(eni_id, index, mac, primary, owned, src_dst_check)
            .await
        {
            let _ = self.unplug(eni_id).await;
            return Err(e);
        }
        Ok(())
    }

    async fn wire(
        &mut self,
        eni_id: &str,
        index: u32,
        mac: &str,
        primary: Ipv4Addr,
        owned: BTreeSet<Ipv4Net>,
        src_dst_check: bool,
    ) -> io::Result<()> {
        self.set_src_dst_check(eni_id, src_dst_check)?;
        self.h
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(primary, 32)
                    .output_interface(index)
                    .scope(RouteScope::Link)
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| nl("primary route", e))?;
        self.h
            .neighbours()
            .add(index, primary.into())
            .link_layer_address(&parse_mac(mac)?)
            .execute()
            .await
            .map_err(|e| nl("primary neighbour", e))?;
        self.sync(eni_id, owned).await
    }

    /// EC2's source/destination check for one ENI: strict reverse-path filtering on its link
    /// (the namespace-wide `all` value is 0, so the link's own value decides).
    pub fn set_src_dst_check(&self, eni_id: &str, on: bool) -> io::Result<()> {
        let Some(p) = self.plugged.get(eni_id) else {
            return Ok(());
        };
        let key = format!("net/ipv4/conf/{}/rp_filter", p.link);
        netns::sysctl(&self.ns, &key, if on { "1" } else { "0" })
    }

    async fn delete_link_named(&self, name: &str) -> io::Result<()> {
        let index = link_index(&self.h, name).await?;
        self.h
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| nl(&format!("deleting {name}"), e))
    }

    /// Makes the fabric route exactly `owned` (besides the primary) to the ENI's link.
    pub async fn sync(&mut self, eni_id: &str, owned: BTreeSet<Ipv4Net>) -> io::Result<()> {
        let Some(p) = self.plugged.get_mut(eni_id) else {
            return Ok(());
        };
        let primary_net = Ipv4Net::new(p.primary, 32).expect("32 is valid");
        let want: BTreeSet<Ipv4Net> = owned.into_iter().filter(|n| *n != primary_net).collect();
        let route = |dst: &Ipv4Net| {
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.network(), dst.prefix_len())
                .gateway(p.primary)
                .output_interface(p.index)
                .build()
        };
        for gone in p.routes.difference(&want) {
            match self.h.route().del(route(gone)).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
                Err(e) => return Err(nl(&format!("removing route {gone}"), e)),
            }
        }
        for new in want.difference(&p.routes) {
            self.h
                .route()
                .add(route(new))
                .replace()
                .execute()
                .await
                .map_err(|e| nl(&format!("route {new}"), e))?;
        }
        p.routes = want;
        Ok(())
    }

    /// Unplugs an ENI: deleting the fabric end removes the pair and its routes.
    pub async fn unplug(&mut self, eni_id: &str) -> io::Result<()> {
        let Some(p) = self.plugged.remove(eni_id) else {
            return Ok(());
        };
        match self.h.link().del(p.index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            Err(e) => Err(nl(&format!("deleting {}", p.link), e)),
        }
    }

    pub fn plugged(&self, eni_id: &str) -> bool {
        self.plugged.contains_key(eni_id)
    }
}

/// Packets the fabric dropped for failing the source/destination check.
pub fn src_dst_drops(ns: &str) -> u64 {
    let Ok(text) = netns::read(ns, "/proc/thread-self/net/netstat") else {
        return 0;
    };
    let mut lines = text.lines();
    while let (Some(h), Some(v)) = (lines.next(), lines.next()) {
        if !h.starts_with("TcpExt:") {
            continue;
        }
        let names = h.split_whitespace();
        let vals = v.split_whitespace();
        for (n, val) in names.zip(vals) {
            if n == "IPReversePathFilter" {
                return val.parse().unwrap_or(0);
            }
        }
    }
    0
}

/// Configures a node's primary interface as EC2's DHCP would: address with the subnet's prefix
/// length, up, default route via the subnet gateway.
pub async fn configure_primary(
    node_ns: &str,
    ifname: &str,
    ip: Ipv4Addr,
    prefix_len: u8,
    gw: Ipv4Addr,
) -> io::Result<()> {
    let h = netns::netlink(node_ns)?;
    let lo = link_index(&h, "lo").await?;
    set_up(&h, lo).await?;
    let idx = link_index(&h, ifname).await?;
    h.address()
        .add(idx, ip.into(), prefix_len)
        .execute()
        .await
        .map_err(|e| nl("node address", e))?;
    set_up(&h, idx).await?;
    h.route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(idx)
                .build(),
        )
        .execute()
        .await
        .map_err(|e| nl("node default route", e))
}

/// Puts the metadata address on the node's loopback so IMDS and the EC2 endpoint are reachable
/// at `169.254.169.254` from the node (and, through it, its pods).
pub async fn add_metadata_address(node_ns: &str, addr: Ipv4Addr) -> io::Result<()> {
    let h = netns::netlink(node_ns)?;
    let lo = link_index(&h, "lo").await?;
    set_up(&h, lo).await?;
    h.address()
        .add(lo, addr.into(), 32)
        .execute()
        .await
        .map_err(|e| nl("metadata address", e))
}
