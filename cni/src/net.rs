//! Pod wiring over netlink (rtnetlink): the veth pair, the pod's address, routes and neighbour,
//! and the host's /32 route and rules. Idempotent where the runtime may repeat a call.
//!
//! The veth is made with ONE request from the host netns: the host end is created here, the peer
//! directly in the pod netns (`IFLA_NET_NS_FD`), so nothing is moved between namespaces (a move
//! costs ~19 ms of rtnl/RCU time; the whole ADD here is well under a millisecond of netlink).
//! ADD sends its requests in batches ([`Batch`]): one datagram per step, which the kernel runs in
//! order and answers message by message, so the wiring costs four round trips, not sixteen. The
//! first batch (create the pair, look up the host end) goes out on a blocking socket from a
//! thread of its own, so the kernel's work on it overlaps the ipamd call ([`create_veth`]).

use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAttribute, RouteProtocol, RouteScope};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
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
    #[error("the thread creating the veth pair ended without an answer")]
    ThreadDied,
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

/// Opens the pod netns file (`NoNetns` when it is gone).
fn open_netns(netns: &str) -> Result<File, NetError> {
    match File::open(netns) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(NetError::NoNetns(netns.to_string()))
        }
        Err(e) => Err(io(format!("opening netns {netns}"))(e)),
    }
}

/// Runs `make` (which opens a socket) inside `ns`: a socket's netns is fixed when it is created,
/// so this thread enters the netns for the call and returns at once.
fn in_netns<T>(ns: &File, netns: &str, make: impl FnOnce() -> T) -> Result<T, NetError> {
    let me = File::open("/proc/thread-self/ns/net").map_err(io("opening our own netns"))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io(format!("entering netns {netns}"))(e.into()))?;
    let made = make();
    // Invariant: returning to the netns we came from cannot fail (we hold its fd and were in it);
    // carrying on in the pod netns would wire the host side into the pod.
    nix::sched::setns(&me, nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("returning to the host network namespace");
    Ok(made)
}

/// The pod netns file and a netlink connection inside it.
pub fn pod(netns: &str) -> Result<(File, Handle), NetError> {
    let ns = open_netns(netns)?;
    let made = in_netns(&ns, netns, rtnetlink::new_connection)?;
    let (conn, h, _) = made.map_err(io("opening a netlink socket in the pod netns"))?;
    tokio::spawn(conn);
    Ok((ns, h))
}

/// The pod netns file and a batching netlink connection inside it (ADD's).
pub fn pod_batch(netns: &str) -> Result<(File, Batch), NetError> {
    let ns = open_netns(netns)?;
    let b = in_netns(&ns, netns, Batch::open)??;
    Ok((ns, b))
}

/// A netlink connection that sends several requests in one datagram. The kernel runs them in
/// order, answering each (every request carries `NLM_F_ACK`), and a failed one does not stop
/// the rest, so a batch is built so that a later step failing after an earlier one is harmless.
///
/// Answers are matched to requests by sequence number. The connection numbers messages 1, 2, …
/// in the order they are submitted (netlink-proto's counter), and only this type submits on it,
/// so it mirrors that counter; ACKs close a request without being passed on, so arrival order
/// alone cannot say which request an answer is for.
pub struct Batch {
    h: rtnetlink::proto::ConnectionHandle<RouteNetlinkMessage>,
    /// The sequence number of the last message submitted.
    last_seq: std::sync::Mutex<u32>,
}

/// One request of a batch.
pub struct Req {
    msg: RouteNetlinkMessage,
    flags: u16,
    what: String,
    /// Errors that count as success (EEXIST for a rule already there).
    tolerate: Tolerate,
}

/// Which errors of a request count as success.
type Tolerate = fn(&rtnetlink::Error) -> bool;

const CREATE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
const REPLACE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
const PLAIN: u16 = NLM_F_REQUEST | NLM_F_ACK;

fn never(_: &rtnetlink::Error) -> bool {
    false
}

impl Req {
    fn new(msg: RouteNetlinkMessage, flags: u16, what: impl Into<String>) -> Req {
        Req {
            msg,
            flags,
            what: what.into(),
            tolerate: never,
        }
    }

    fn tolerating(self, tolerate: Tolerate) -> Req {
        Req { tolerate, ..self }
    }
}

impl Batch {
    /// A connection in the current netns.
    pub fn open() -> Result<Batch, NetError> {
        let (conn, h, _) =
            rtnetlink::proto::new_connection(rtnetlink::sys::protocols::NETLINK_ROUTE)
                .map_err(io("opening a netlink socket"))?;
        tokio::spawn(conn);
        Ok(Batch {
            h,
            last_seq: std::sync::Mutex::new(0),
        })
    }

    /// Sends `reqs` in one datagram; returns each request's replies, or the first error that
    /// is not tolerated (every request has been answered by then).
    pub async fn run(&self, reqs: Vec<Req>) -> Result<Vec<Vec<RouteNetlinkMessage>>, NetError> {
        let (msgs, mut answers) = Answers::prepare(reqs);
        let n = msgs.len();
        let (base, mut replies) = {
            // Invariant: the lock is only held around the submission below, which cannot panic.
            let mut last = self.last_seq.lock().expect("netlink sequence counter");
            let replies = self
                .h
                .request_batch(msgs, rtnetlink::sys::SocketAddr::new(0, 0))
                .map_err(|e| NetError::Missing(format!("the netlink connection is gone: {e}")))?;
            let base = last.wrapping_add(1);
            *last = last.wrapping_add(n as u32);
            (base, replies)
        };
        while let Some(m) = replies.next().await {
            let i = m.header.sequence_number.wrapping_sub(base) as usize;
            answers.file(i, m.payload);
        }
        answers.finish()
    }
}

/// A batch's answers as they arrive: each request's replies, and the first error that its
/// request does not tolerate. Shared by [`Batch::run`] and [`run_blocking`].
struct Answers {
    out: Vec<Vec<RouteNetlinkMessage>>,
    meta: Vec<(String, Tolerate)>,
    failed: Option<NetError>,
}

impl Answers {
    /// The requests as netlink messages (flags set, sequence numbers left to the sender), and
    /// an empty set of answers for them.
    fn prepare(reqs: Vec<Req>) -> (Vec<NetlinkMessage<RouteNetlinkMessage>>, Answers) {
        let mut meta = Vec::with_capacity(reqs.len());
        let msgs: Vec<_> = reqs
            .into_iter()
            .map(|r| {
                let mut m = NetlinkMessage::from(r.msg);
                m.header.flags = r.flags;
                meta.push((r.what, r.tolerate));
                m
            })
            .collect();
        let answers = Answers {
            out: vec![Vec::new(); msgs.len()],
            meta,
            failed: None,
        };
        (msgs, answers)
    }

    /// Files one answer to request `i` (its index in the batch); true when it is an ACK or an
    /// error, the last answer a request gets.
    fn file(&mut self, i: usize, payload: NetlinkPayload<RouteNetlinkMessage>) -> bool {
        match payload {
            NetlinkPayload::InnerMessage(x) => {
                if let Some(o) = self.out.get_mut(i) {
                    o.push(x);
                }
                false
            }
            NetlinkPayload::Error(e) => {
                if e.code.is_some() {
                    let e = rtnetlink::Error::NetlinkError(e);
                    let (what, tolerated) = match self.meta.get(i) {
                        Some((what, tolerate)) => (what.clone(), tolerate(&e)),
                        None => ("a batched netlink request".to_string(), false),
                    };
                    if self.failed.is_none() && !tolerated {
                        self.failed = Some(nl(what)(e));
                    }
                }
                true
            }
            _ => false,
        }
    }

    fn finish(self) -> Result<Vec<Vec<RouteNetlinkMessage>>, NetError> {
        match self.failed {
            Some(e) => Err(e),
            None => Ok(self.out),
        }
    }
}

pub fn get_link(name: &str) -> Req {
    let mut m = LinkUnspec::new_with_index(0).build();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    Req::new(
        RouteNetlinkMessage::GetLink(m),
        PLAIN,
        format!("looking up link {name}"),
    )
}

pub fn del_link(name: &str) -> Req {
    let mut m = LinkUnspec::new_with_index(0).build();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    Req::new(
        RouteNetlinkMessage::DelLink(m),
        PLAIN,
        format!("deleting link {name}"),
    )
    .tolerating(is_missing)
}

/// (index, MAC) from a GETLINK's replies.
pub fn link_reply(replies: &[RouteNetlinkMessage]) -> Option<(u32, Vec<u8>)> {
    replies.iter().find_map(|r| match r {
        RouteNetlinkMessage::NewLink(l) => Some((
            l.header.index,
            l.attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Address(b) => Some(b.clone()),
                    _ => None,
                })
                .unwrap_or_default(),
        )),
        _ => None,
    })
}

fn rule_msg(ip: Ipv4Addr, from: bool, table: u32, prio: u32) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.action = RuleAction::ToTable;
    if from {
        m.header.src_len = 32;
        m.attributes.push(RuleAttribute::Source(IpAddr::V4(ip)));
    } else {
        m.header.dst_len = 32;
        m.attributes
            .push(RuleAttribute::Destination(IpAddr::V4(ip)));
    }
    if table > 255 {
        m.attributes.push(RuleAttribute::Table(table));
    } else {
        m.header.table = table as u8;
    }
    m.attributes.push(RuleAttribute::Priority(prio));
    m
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

fn name_of(attrs: &[LinkAttribute]) -> String {
    attrs
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
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

/// The veth pair ADD makes (the address comes from ipamd meanwhile).
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub host_veth: &'a str,
    pub host_mac: [u8; 6],
    /// The host veth's alias: the attachment it serves (`nodewire_proto::veth_alias`).
    pub alias: &'a str,
    pub pod_ifname: &'a str,
    pub mtu: u32,
}

/// The veth pair, created; `pod_mac` is the pod end's MAC.
pub struct Veth {
    pub host_index: u32,
    pub pod_index: u32,
    pub pod_mac: Vec<u8>,
}

/// Creates the veth pair: the host end here, the pod end inside `ns`, both down (the kernel
/// refuses to bring a veth end up before its peer exists: ENOTCONN). A stale host link of the
/// same name (a pod recreated under its old name), or the pod's interface left by an earlier
/// ADD, is deleted first. Two round trips: create + look up the host end, look up the pod end.
pub async fn create_veth(
    host: &Batch,
    pod: &Batch,
    ns: &File,
    p: &Plan<'_>,
) -> Result<Veth, NetError> {
    // The first try runs on a thread of its own: creating the pair is ~0.5 ms of kernel work
    // done inside the sending thread's syscall, and meanwhile this thread (the runtime's only
    // one) talks HTTP/2 to ipamd. The request names the pod netns by fd: the thread owns a
    // duplicate of it, so the fd stays valid for as long as the thread may send.
    let ns_fd = ns.try_clone().map_err(io("duplicating the pod netns fd"))?;
    let reqs = create_reqs(&ns_fd, p);
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::Builder::new()
        .name("veth".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let made = blocking_socket().and_then(|s| run_blocking(&s, reqs));
            drop(ns_fd);
            let _ = tx.send(made);
        })
        .map_err(io("starting the veth thread"))?;
    let first = rx.await.unwrap_or(Err(NetError::ThreadDied));
    let made = match first {
        Err(NetError::Netlink { source, .. }) if is_exists(&source) => {
            // The host name is taken by a stale veth, or the pod already has the ifname (a
            // repeated ADD). Remove both and try once more.
            host.run(vec![del_link(p.host_veth)]).await?;
            pod.run(vec![del_link(p.pod_ifname)]).await?;
            host.run(create_reqs(ns, p)).await?
        }
        other => other?,
    };
    let (host_index, _) = made
        .get(1)
        .and_then(|r| link_reply(r))
        .ok_or_else(|| NetError::Missing(format!("host veth {} vanished", p.host_veth)))?;
    let got = pod.run(vec![get_link(p.pod_ifname)]).await?;
    let (pod_index, pod_mac) = got.first().and_then(|r| link_reply(r)).ok_or_else(|| {
        NetError::Missing(format!("pod interface {} did not appear", p.pod_ifname))
    })?;
    Ok(Veth {
        host_index,
        pod_index,
        pod_mac,
    })
}

/// Creating the pair (host end here, peer in `ns`) and looking up the host end.
///
/// Both ends are created with one TX and one RX queue, the number a veth uses anyway. Without
/// the counts the kernel allocates one queue per possible CPU and then trims the real count to
/// one, and trimming TX queues on a registered device waits for an expedited RCU grace period
/// under the RTNL lock: twice per pair, ~0.15 ms each here, and it stalls every other netlink
/// user on the node meanwhile.
fn create_reqs(ns: &File, p: &Plan<'_>) -> Vec<Req> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(p.pod_ifname.to_string())
        .mtu(p.mtu)
        .setns_by_fd(ns.as_raw_fd())
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
        .build();
    let veth = LinkVeth::new(p.host_veth, "unused")
        .mtu(p.mtu)
        .address(p.host_mac.to_vec())
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    vec![
        Req::new(
            RouteNetlinkMessage::NewLink(veth),
            CREATE,
            "creating the veth pair",
        ),
        get_link(p.host_veth),
    ]
}

/// A blocking netlink socket in the current netns, connected to the kernel.
fn blocking_socket() -> Result<rtnetlink::sys::Socket, NetError> {
    let mut s = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
        .map_err(io("opening a netlink socket"))?;
    s.bind_auto().map_err(io("binding a netlink socket"))?;
    s.connect(&rtnetlink::sys::SocketAddr::new(0, 0))
        .map_err(io("connecting a netlink socket"))?;
    Ok(s)
}

/// [`Batch::run`] on a blocking socket (its own sequence numbers, 1..=n): one datagram out,
/// then answers until every request is acknowledged or has failed. Every request asks for an
/// ACK (so each one ends with an ACK or an error); none may be a dump (this is for ADD's first
/// batch only: a create and a look-up by name).
fn run_blocking(
    sock: &rtnetlink::sys::Socket,
    reqs: Vec<Req>,
) -> Result<Vec<Vec<RouteNetlinkMessage>>, NetError> {
    let (msgs, mut answers) = Answers::prepare(reqs);
    let n = msgs.len();
    let mut buf = Vec::new();
    for (i, mut m) in msgs.into_iter().enumerate() {
        // (Not masking the dump bits: for a NEW request the same bits are EXCL and REPLACE.)
        m.header.flags |= NLM_F_ACK;
        m.header.sequence_number = i as u32 + 1;
        m.finalize();
        let at = buf.len();
        buf.resize(at + m.buffer_len(), 0);
        m.serialize(&mut buf[at..]);
        // Messages in a datagram start on 4-byte boundaries (NLMSG_ALIGN).
        buf.resize(buf.len().next_multiple_of(4), 0);
    }
    sock.send(&buf, 0).map_err(io("sending netlink requests"))?;
    let mut answered = vec![false; n];
    let mut left = n;
    while left > 0 {
        let (data, _) = sock
            .recv_from_full()
            .map_err(io("reading netlink answers"))?;
        let mut at = 0;
        while at + 16 <= data.len() {
            // nlmsg_len, the first field of every message's header.
            let len =
                u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
            if len < 16 || at + len > data.len() {
                break;
            }
            // An answer that does not parse is skipped, as netlink-proto does for `Batch`.
            if let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[at..at + len]) {
                let i = (m.header.sequence_number as usize).wrapping_sub(1);
                if answers.file(i, m.payload) && i < n && !answered[i] {
                    answered[i] = true;
                    left -= 1;
                }
            }
            at += len.next_multiple_of(4);
        }
    }
    answers.finish()
}

/// Inside the pod, one batch: the interface up, `<ip>/32`, `169.254.1.1 scope link`,
/// `default via 169.254.1.1`, and the gateway's permanent neighbour entry pointing at the host
/// veth's MAC.
pub async fn setup_pod(pod: &Batch, v: &Veth, p: &Plan<'_>, ip: Ipv4Addr) -> Result<(), NetError> {
    let up = LinkUnspec::new_with_index(v.pod_index).up().build();
    let mut addr = AddressMessage::default();
    addr.header.family = AddressFamily::Inet;
    addr.header.prefix_len = 32;
    addr.header.index = v.pod_index;
    addr.attributes
        .push(AddressAttribute::Local(IpAddr::V4(ip)));
    addr.attributes
        .push(AddressAttribute::Address(IpAddr::V4(ip)));
    let gw_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(POD_GATEWAY, 32)
        .output_interface(v.pod_index)
        .scope(RouteScope::Link)
        .build();
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(POD_GATEWAY)
        .output_interface(v.pod_index)
        .build();
    let mut neigh = NeighbourMessage::default();
    neigh.header.family = AddressFamily::Inet;
    neigh.header.ifindex = v.pod_index;
    neigh.header.state = NeighbourState::Permanent;
    neigh
        .attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            POD_GATEWAY,
        )));
    neigh
        .attributes
        .push(NeighbourAttribute::LinkLayerAddress(p.host_mac.to_vec()));
    pod.run(vec![
        Req::new(
            RouteNetlinkMessage::SetLink(up),
            PLAIN,
            "bringing the pod interface up",
        ),
        Req::new(
            RouteNetlinkMessage::NewAddress(addr),
            REPLACE,
            "adding the pod address",
        ),
        Req::new(
            RouteNetlinkMessage::NewRoute(gw_route),
            REPLACE,
            "adding the pod's gateway route",
        ),
        Req::new(
            RouteNetlinkMessage::NewRoute(default),
            REPLACE,
            "adding the pod's default route",
        ),
        Req::new(
            RouteNetlinkMessage::NewNeighbour(neigh),
            REPLACE,
            "adding the gateway's neighbour entry",
        ),
    ])
    .await?;
    Ok(())
}

/// On the host: IPv6 off for the veth (sysctls), then one batch: the veth up and tagged with its
/// attachment (the kernel ignores IFLA_IFALIAS at creation), `<ip>/32 dev <veth>` in main, rule
/// `to <ip> lookup main` (512) and, for a secondary ENI, `from <ip> lookup <table>` (1536).
/// `table` is the ENI's route table; main (254) for the primary ENI.
pub async fn setup_host(
    host: &Batch,
    v: &Veth,
    p: &Plan<'_>,
    ip: Ipv4Addr,
    table: u32,
) -> Result<(), NetError> {
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
    let mut up = LinkUnspec::new_with_index(v.host_index).up().build();
    up.attributes
        .push(LinkAttribute::IfAlias(p.alias.to_string()));
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(ip, 32)
        .output_interface(v.host_index)
        .scope(RouteScope::Link)
        .table_id(MAIN_TABLE)
        .build();
    let mut reqs = vec![
        Req::new(
            RouteNetlinkMessage::SetLink(up),
            PLAIN,
            "bringing the host veth up",
        ),
        Req::new(
            RouteNetlinkMessage::NewRoute(route),
            REPLACE,
            "adding the host route to the pod",
        ),
        Req::new(
            RouteNetlinkMessage::NewRule(rule_msg(ip, false, MAIN_TABLE, TO_POD_PRIORITY)),
            CREATE,
            format!("adding rule priority {TO_POD_PRIORITY} for {}", ip),
        )
        .tolerating(is_exists),
    ];
    if table != MAIN_TABLE {
        reqs.push(
            Req::new(
                RouteNetlinkMessage::NewRule(rule_msg(ip, true, table, FROM_POD_PRIORITY)),
                CREATE,
                format!("adding rule priority {FROM_POD_PRIORITY} for {}", ip),
            )
            .tolerating(is_exists),
        );
    }
    host.run(reqs).await?;
    Ok(())
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

/// Whose is `ip` on this host: the name and alias of the link its `/32` route in main points at
/// (alias "" for a link without one), `None` when there is no such route.
pub async fn route_owner(h: &Handle, ip: Ipv4Addr) -> Result<Option<(String, String)>, NetError> {
    let oif = routes(h, MAIN_TABLE)
        .await?
        .into_iter()
        .find(|(d, len, gw, ..)| *d == ip && *len == 32 && gw.is_none())
        .and_then(|(.., oif, _)| oif);
    let Some(oif) = oif else { return Ok(None) };
    let mut s = h.link().get().match_index(oif).execute();
    match s.try_next().await {
        Ok(Some(l)) => Ok(Some((name_of(&l.attributes), alias_of(&l.attributes)))),
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
/// prevResult to tell it), only when the veth carries `alias` (or none: made by a version
/// before aliases): a veth of the same name tagged otherwise serves a newer sandbox of the same
/// pod.
pub async fn ip_via(h: &Handle, veth: &str, alias: &str) -> Result<Option<Ipv4Addr>, NetError> {
    let Some((idx, a)) = link_alias(h, veth).await? else {
        return Ok(None);
    };
    if a != alias && !a.is_empty() {
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
