//! Pod wiring over netlink (rtnetlink): the veth pair, the pod's address, routes and neighbour,
//! and the host's /32 route and rules. Idempotent where the runtime may repeat a call.
//!
//! The veth is made with ONE request from the host netns: the host end is created here, the peer
//! directly in the pod netns (`IFLA_NET_NS_FD`), so nothing is moved between namespaces (a move
//! costs ~19 ms of rtnl/RCU time; the whole ADD here is well under a millisecond of netlink).

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use netlink_packet_route::route::{RouteAttribute, RouteProtocol, RouteScope};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::spec::POD_GATEWAY;

/// `to <pod> lookup main`.
pub const TO_POD_PRIORITY: u32 = 512;
/// `from <pod> lookup <ENI table>` for addresses on secondary ENIs.
pub const FROM_POD_PRIORITY: u32 = 1536;
pub const MAIN_TABLE: u32 = 254;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network namespace {0} does not exist")]
    NoNetns(String),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Missing(String),
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Io { what, source }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(libc::ENOENT | libc::ESRCH | libc::ENODEV))
}

fn is_exists(e: &rtnetlink::Error) -> bool {
    errno(e) == Some(libc::EEXIST)
}

/// A netlink connection in the current (host) netns.
pub fn host() -> Result<Handle, NetError> {
    let (conn, h, _) = rtnetlink::new_connection().map_err(io("opening a netlink socket"))?;
    tokio::spawn(conn);
    Ok(h)
}

/// The pod netns file and a netlink connection inside it. The socket's netns is fixed when it
/// is created, so this thread enters the pod netns for the `socket()` call and returns at once.
pub fn pod(netns: &str) -> Result<(File, Handle), NetError> {
    let ns = match File::open(netns) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(NetError::NoNetns(netns.to_string()));
        }
        Err(e) => return Err(io(format!("opening netns {netns}"))(e)),
    };
    let me = File::open("/proc/thread-self/ns/net").map_err(io("opening our own netns"))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io(format!("entering netns {netns}"))(e.into()))?;
    let made = rtnetlink::new_connection();
    // Invariant: returning to the netns we came from cannot fail (we hold its fd and were in it);
    // carrying on in the pod netns would wire the host side into the pod.
    nix::sched::setns(&me, nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("returning to the host network namespace");
    let (conn, h, _) = made.map_err(io("opening a netlink socket in the pod netns"))?;
    tokio::spawn(conn);
    Ok((ns, h))
}

/// The link called `name`: (index, MAC).
pub async fn link(h: &Handle, name: &str) -> Result<Option<(u32, Vec<u8>)>, NetError> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(l)) => {
            let mac = l
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Address(b) => Some(b.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            Ok(Some((l.header.index, mac)))
        }
        Ok(None) => Ok(None),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(nl(format!("looking up link {name}"))(e)),
    }
}

/// The alias of the link called `name` ("" when it has none); `None` when there is no such link.
pub async fn link_alias(h: &Handle, name: &str) -> Result<Option<(u32, String)>, NetError> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(l)) => Ok(Some((l.header.index, alias_of(&l.attributes)))),
        Ok(None) => Ok(None),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(nl(format!("looking up link {name}"))(e)),
    }
}

fn alias_of(attrs: &[LinkAttribute]) -> String {
    attrs
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfAlias(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// What ADD sets up.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub host_veth: &'a str,
    pub host_mac: [u8; 6],
    /// The host veth's alias: the attachment it serves (`nodewire_proto::veth_alias`).
    pub alias: &'a str,
    pub pod_ifname: &'a str,
    pub ip: Ipv4Addr,
    pub mtu: u32,
    /// The ENI's route table; main (254) for the primary ENI.
    pub table: u32,
}

/// The veth pair, created; `pod_mac` is the pod end's MAC.
pub struct Veth {
    pub host_index: u32,
    pub pod_index: u32,
    pub pod_mac: Vec<u8>,
}

/// Creates the veth pair: the host end here, the pod end inside `ns`, both down (the kernel
/// refuses to bring a veth end up before its peer exists: ENOTCONN). A stale host link of the same name (a pod recreated under
/// its old name) is deleted first.
pub async fn create_veth(
    host: &Handle,
    pod: &Handle,
    ns: &File,
    p: &Plan<'_>,
) -> Result<Veth, NetError> {
    let build = || {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(p.pod_ifname.to_string())
            .mtu(p.mtu)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        LinkVeth::new(p.host_veth, "unused")
            .mtu(p.mtu)
            .address(p.host_mac.to_vec())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build()
    };
    match host.link().add(build()).execute().await {
        Ok(()) => {}
        Err(e) if is_exists(&e) => {
            // Either the host name is taken by a stale veth, or the pod already has the ifname
            // (a repeated ADD). Remove both and try once more.
            if let Some((idx, _)) = link(host, p.host_veth).await? {
                host.link()
                    .del(idx)
                    .execute()
                    .await
                    .map_err(nl(format!("deleting stale link {}", p.host_veth)))?;
            }
            if let Some((idx, _)) = link(pod, p.pod_ifname).await? {
                pod.link()
                    .del(idx)
                    .execute()
                    .await
                    .map_err(nl(format!("deleting the pod's old {}", p.pod_ifname)))?;
            }
            host.link()
                .add(build())
                .execute()
                .await
                .map_err(nl("creating the veth pair"))?;
        }
        Err(e) => return Err(nl("creating the veth pair")(e)),
    }
    let (host_index, _) = link(host, p.host_veth)
        .await?
        .ok_or_else(|| NetError::Missing(format!("host veth {} vanished", p.host_veth)))?;
    let (pod_index, pod_mac) = link(pod, p.pod_ifname).await?.ok_or_else(|| {
        NetError::Missing(format!("pod interface {} did not appear", p.pod_ifname))
    })?;
    Ok(Veth {
        host_index,
        pod_index,
        pod_mac,
    })
}

/// Inside the pod: `<ip>/32`, `169.254.1.1 scope link`, `default via 169.254.1.1`, and the
/// gateway's permanent neighbour entry pointing at the host veth's MAC.
pub async fn setup_pod(pod: &Handle, v: &Veth, p: &Plan<'_>) -> Result<(), NetError> {
    pod.link()
        .set(LinkUnspec::new_with_index(v.pod_index).up().build())
        .execute()
        .await
        .map_err(nl("bringing the pod interface up"))?;
    pod.address()
        .add(v.pod_index, IpAddr::V4(p.ip), 32)
        .replace()
        .execute()
        .await
        .map_err(nl("adding the pod address"))?;
    pod.route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(POD_GATEWAY, 32)
                .output_interface(v.pod_index)
                .scope(RouteScope::Link)
                .build(),
        )
        .replace()
        .execute()
        .await
        .map_err(nl("adding the pod's gateway route"))?;
    pod.route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(POD_GATEWAY)
                .output_interface(v.pod_index)
                .build(),
        )
        .replace()
        .execute()
        .await
        .map_err(nl("adding the pod's default route"))?;
    pod.neighbours()
        .add(v.pod_index, IpAddr::V4(POD_GATEWAY))
        .link_layer_address(&p.host_mac)
        .replace()
        .execute()
        .await
        .map_err(nl("adding the gateway's neighbour entry"))?;
    Ok(())
}

/// On the host: IPv6 off for the veth, the veth up, `<ip>/32 dev <veth>` in main, rule
/// `to <ip> lookup main` (512) and, for a secondary ENI, `from <ip> lookup <table>` (1536).
pub async fn setup_host(host: &Handle, v: &Veth, p: &Plan<'_>) -> Result<(), NetError> {
    for (k, val) in [
        ("accept_ra", "0"),
        ("accept_redirects", "1"),
        ("forwarding", "0"),
    ] {
        let f = format!("/proc/sys/net/ipv6/conf/{}/{k}", p.host_veth);
        match std::fs::write(&f, val) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(f)(e)),
            _ => {}
        }
    }
    // Up and tagged with the attachment in one request (the kernel ignores IFLA_IFALIAS at
    // creation).
    let mut up = LinkUnspec::new_with_index(v.host_index).up().build();
    up.attributes
        .push(LinkAttribute::IfAlias(p.alias.to_string()));
    host.link()
        .set(up)
        .execute()
        .await
        .map_err(nl("bringing the host veth up"))?;
    host.route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(p.ip, 32)
                .output_interface(v.host_index)
                .scope(RouteScope::Link)
                .table_id(MAIN_TABLE)
                .build(),
        )
        .replace()
        .execute()
        .await
        .map_err(nl("adding the host route to the pod"))?;
    add_rule(host, p.ip, false, MAIN_TABLE, TO_POD_PRIORITY).await?;
    if p.table != MAIN_TABLE {
        add_rule(host, p.ip, true, p.table, FROM_POD_PRIORITY).await?;
    }
    Ok(())
}

async fn add_rule(
    h: &Handle,
    ip: Ipv4Addr,
    from: bool,
    table: u32,
    prio: u32,
) -> Result<(), NetError> {
    let r = h.rule().add().v4();
    let r = if from {
        r.source_prefix(ip, 32)
    } else {
        r.destination_prefix(ip, 32)
    };
    match r
        .table_id(table)
        .priority(prio)
        .action(RuleAction::ToTable)
        .execute()
        .await
    {
        Err(e) if !is_exists(&e) => Err(nl(format!("adding rule priority {prio} for {ip}"))(e)),
        _ => Ok(()),
    }
}

fn rule_prio(r: &RuleMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RuleAttribute::Priority(p) => Some(*p),
        _ => None,
    })
}

fn rule_table(r: &RuleMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(r.header.table as u32)
}

/// The pod's host rules: (priority, table) of `to <ip>` at 512 and `from <ip>` at 1536.
pub async fn pod_rules(h: &Handle, ip: Ipv4Addr) -> Result<Vec<(RuleMessage, u32, u32)>, NetError> {
    let mut out = Vec::new();
    let mut s = h.rule().get(IpVersion::V4).execute();
    while let Some(r) = s.try_next().await.map_err(nl("listing rules"))? {
        let prio = rule_prio(&r);
        let hit = r.attributes.iter().any(|a| match a {
            RuleAttribute::Destination(IpAddr::V4(d)) => {
                *d == ip && r.header.dst_len == 32 && prio == Some(TO_POD_PRIORITY)
            }
            RuleAttribute::Source(IpAddr::V4(s)) => {
                *s == ip && r.header.src_len == 32 && prio == Some(FROM_POD_PRIORITY)
            }
            _ => false,
        });
        if hit {
            let t = rule_table(&r);
            out.push((r, prio.unwrap_or_default(), t));
        }
    }
    Ok(out)
}

/// Deletes every copy of one pod rule by match, no dump: the kernel finds it from priority and
/// address alone (any table, any action), and a dump raced by other pods' changes could miss one.
async fn del_rule(h: &Handle, ip: Ipv4Addr, from: bool, prio: u32) -> Result<usize, NetError> {
    // More copies than this means something re-adds them as fast as we delete.
    const MAX_COPIES: usize = 64;
    for n in 0..MAX_COPIES {
        let mut m = RuleMessage::default();
        m.header.family = AddressFamily::Inet;
        if from {
            m.header.src_len = 32;
            m.attributes.push(RuleAttribute::Source(IpAddr::V4(ip)));
        } else {
            m.header.dst_len = 32;
            m.attributes
                .push(RuleAttribute::Destination(IpAddr::V4(ip)));
        }
        m.attributes.push(RuleAttribute::Priority(prio));
        match h.rule().del(m).execute().await {
            Ok(()) => {}
            Err(e) if is_missing(&e) => return Ok(n),
            Err(e) => return Err(nl(format!("removing rule priority {prio} for {ip}"))(e)),
        }
    }
    Err(NetError::Missing(format!(
        "rule priority {prio} for {ip} keeps coming back ({MAX_COPIES} copies removed)"
    )))
}

/// The pod's host side: its rules (`to <ip>` at 512, `from <ip>` at 1536, every copy) and its
/// `/32` route in main. The veth itself is left to the runtime's netns deletion (see
/// docs/vpc-cni.md). Used by ADD's unwind, by DEL when ipamd cannot be asked, and by ipamd
/// itself when it releases an address. Returns how many rules and routes went.
pub async fn teardown_host(h: &Handle, ip: Ipv4Addr) -> Result<usize, NetError> {
    let mut n = del_rule(h, ip, false, TO_POD_PRIORITY).await?;
    n += del_rule(h, ip, true, FROM_POD_PRIORITY).await?;
    let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(ip, 32)
        .table_id(MAIN_TABLE)
        .build();
    // Any scope and protocol, as `ip route del` matches.
    route.header.protocol = RouteProtocol::Unspec;
    route.header.scope = RouteScope::NoWhere;
    match h.route().del(route).execute().await {
        Ok(()) => n += 1,
        Err(e) if is_missing(&e) => {}
        Err(e) => return Err(nl(format!("removing the host route to {ip}"))(e)),
    }
    Ok(n)
}

/// Whose is `ip` on this host: the alias of the link its `/32` route in main points at
/// (`Some("")` for a link without one), `None` when there is no such route.
pub async fn route_owner(h: &Handle, ip: Ipv4Addr) -> Result<Option<String>, NetError> {
    let oif = routes(h, MAIN_TABLE)
        .await?
        .into_iter()
        .find(|(d, len, gw, ..)| *d == ip && *len == 32 && gw.is_none())
        .and_then(|(.., oif, _)| oif);
    let Some(oif) = oif else { return Ok(None) };
    let mut s = h.link().get().match_index(oif).execute();
    match s.try_next().await {
        Ok(Some(l)) => Ok(Some(alias_of(&l.attributes))),
        Ok(None) => Ok(None),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(nl(format!("looking up link {oif}"))(e)),
    }
}

/// Deletes a link by name (ADD's unwind); a missing link is fine.
pub async fn delete_link(h: &Handle, name: &str) -> Result<(), NetError> {
    if let Some((idx, _)) = link(h, name).await? {
        match h.link().del(idx).execute().await {
            Err(e) if !is_missing(&e) => return Err(nl(format!("deleting link {name}"))(e)),
            _ => {}
        }
    }
    Ok(())
}

/// IPv4 routes of `table` as (destination, prefix length, gateway, output interface, scope).
pub async fn routes(
    h: &Handle,
    table: u32,
) -> Result<Vec<(Ipv4Addr, u8, Option<Ipv4Addr>, Option<u32>, RouteScope)>, NetError> {
    let mut out = Vec::new();
    let mut s = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(r) = s.try_next().await.map_err(nl("listing routes"))? {
        let mut t = r.header.table as u32;
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let (mut gw, mut oif) = (None, None);
        for a in &r.attributes {
            match a {
                RouteAttribute::Table(x) => t = *x,
                RouteAttribute::Destination(netlink_packet_route::route::RouteAddress::Inet(d)) => {
                    dst = *d
                }
                RouteAttribute::Gateway(netlink_packet_route::route::RouteAddress::Inet(g)) => {
                    gw = Some(*g)
                }
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if t == table {
            out.push((
                dst,
                r.header.destination_prefix_length,
                gw,
                oif,
                r.header.scope,
            ));
        }
    }
    Ok(out)
}

/// The pod address on the host veth's /32 route (for a DEL that has neither ipamd nor
/// prevResult to tell it), only when the veth carries `alias`: a veth of the same name tagged
/// otherwise serves a newer sandbox of the same pod.
pub async fn ip_via(h: &Handle, veth: &str, alias: &str) -> Result<Option<Ipv4Addr>, NetError> {
    let Some((idx, a)) = link_alias(h, veth).await? else {
        return Ok(None);
    };
    if a != alias {
        return Ok(None);
    }
    Ok(routes(h, MAIN_TABLE)
        .await?
        .into_iter()
        .find(|(_, len, gw, oif, _)| *len == 32 && gw.is_none() && *oif == Some(idx))
        .map(|(d, ..)| d))
}

/// IPv4 addresses on link `index` as (address, prefix length).
pub async fn addresses(h: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetError> {
    use netlink_packet_route::address::AddressAttribute;
    let mut out = Vec::new();
    let mut s = h.address().get().set_link_index_filter(index).execute();
    while let Some(a) = s.try_next().await.map_err(nl("listing addresses"))? {
        for at in &a.attributes {
            if let AddressAttribute::Address(IpAddr::V4(v)) = at {
                out.push((*v, a.header.prefix_len));
            }
        }
    }
    Ok(out)
}

/// Permanent IPv4 neighbour entries on link `index` as (address, MAC).
pub async fn permanent_neighbours(
    h: &Handle,
    index: u32,
) -> Result<Vec<(Ipv4Addr, Vec<u8>)>, NetError> {
    use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
    let mut out = Vec::new();
    let mut s = h.neighbours().get().execute();
    while let Some(n) = s.try_next().await.map_err(nl("listing neighbours"))? {
        if n.header.ifindex != index || n.header.state != NeighbourState::Permanent {
            continue;
        }
        let mut ip = None;
        let mut mac = Vec::new();
        for a in &n.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => ip = Some(*d),
                NeighbourAttribute::LinkLayerAddress(m) => mac = m.clone(),
                _ => {}
            }
        }
        if let Some(ip) = ip {
            out.push((ip, mac));
        }
    }
    Ok(out)
}

/// Whether `path` names an existing netns file.
pub fn netns_exists(path: &str) -> bool {
    !path.is_empty() && Path::new(path).exists()
}
