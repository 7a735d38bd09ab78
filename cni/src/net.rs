//! Pod wiring over netlink (rtnetlink): the veth pair, the pod's address, routes and neighbour,
//! and the host's /32 route and rules. Idempotent where the runtime may repeat a call.
//!
//! The veth is made with ONE request from the host netns: the host end is created here, the peer
//! directly in the pod netns (`IFLA_NET_NS_FD`), so nothing is moved between namespaces (a move
//! costs ~19 ms of rtnl/RCU time; the whole ADD here is well under a millisecond of netlink).
//! ADD sends its requests in batches ([`Batch`]): one datagram per step, which the kernel runs
//! in order, reporting each failure and acknowledging the last request, so the wiring costs
//! two round trips, not sixteen: the veth pair, sent from a thread of its own ([`start_veth`])
//! so the kernel's work on it overlaps the ipamd call on the runtime's thread; then the pod
//! side and the host side, in flight together ([`Pair::wire`]).

use futures::TryStreamExt;
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
pub fn open_netns(netns: &str) -> Result<File, NetError> {
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

/// A blocking netlink socket that sends several requests in one datagram. The kernel runs them
/// in order inside the send, and a failed one does not stop the rest, so a batch is built so
/// that a later step failing after an earlier one is harmless. Only the last request asks for
/// an ACK: the kernel reports every failure anyway, in order, so once the last request is
/// answered every earlier one has been (one answer to read per batch, not one per request).
/// Answers are matched to requests by sequence number (this socket's own counter). ADD's netlink work is a few such batches ([`start_veth`], [`Pair::wire`]): no
/// async connection, no netlink task, no polling.
pub struct Batch {
    sock: rtnetlink::sys::Socket,
    /// The sequence number of the last message sent.
    seq: u32,
    buf: Vec<u8>,
}

/// A batch sent and not yet answered ([`Batch::send`], [`Batch::answers`]).
pub struct Sent {
    base: u32,
    n: usize,
    answers: Answers,
}

/// The answers to a batch: each request's replies, in request order.
pub type Made = Vec<Vec<RouteNetlinkMessage>>;

/// The largest answer a batch reads: an ACK or error is 36 bytes plus, for an error, the
/// request (capped); a link look-up ([`get_link`], tests and the odd caller) ~1.5 KiB.
const ANSWER_BUF: usize = 32 * 1024;

impl Batch {
    /// A socket in the current netns (a socket's netns is fixed when it is made).
    pub fn open() -> Result<Batch, NetError> {
        let mut sock = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
            .map_err(io("opening a netlink socket"))?;
        sock.bind_auto().map_err(io("binding a netlink socket"))?;
        sock.connect(&rtnetlink::sys::SocketAddr::new(0, 0))
            .map_err(io("connecting a netlink socket"))?;
        Ok(Batch {
            sock,
            seq: 0,
            buf: Vec::new(),
        })
    }

    /// Sends `reqs` in one datagram (the kernel has done the work when this returns).
    pub fn send(&mut self, reqs: Vec<Req>) -> Result<Sent, NetError> {
        let (msgs, answers) = Answers::prepare(reqs);
        let n = msgs.len();
        let base = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(n as u32);
        self.buf.clear();
        for (i, mut m) in msgs.into_iter().enumerate() {
            m.header.sequence_number = base.wrapping_add(i as u32);
            if i + 1 < n {
                m.header.flags &= !NLM_F_ACK;
            }
            m.finalize();
            let at = self.buf.len();
            self.buf.resize(at + m.buffer_len(), 0);
            m.serialize(&mut self.buf[at..]);
            // Messages in a datagram start on 4-byte boundaries (NLMSG_ALIGN).
            self.buf.resize(self.buf.len().next_multiple_of(4), 0);
        }
        if n > 0 {
            self.sock
                .send(&self.buf, 0)
                .map_err(io("sending netlink requests"))?;
        }
        Ok(Sent { base, n, answers })
    }

    /// Reads the answers to `sent` until the last request is acknowledged or has failed; each
    /// request's replies, or the first error that its request does not tolerate. None of the
    /// requests may be a dump.
    pub fn answers(&mut self, sent: Sent) -> Result<Made, NetError> {
        let Sent {
            base,
            n,
            mut answers,
        } = sent;
        let mut done = n == 0;
        while !done {
            self.buf.clear();
            self.buf.reserve(ANSWER_BUF);
            // MSG_TRUNC: the datagram's real length, to tell a cut-off answer.
            let len = self
                .sock
                .recv(&mut self.buf, libc::MSG_TRUNC)
                .map_err(io("reading netlink answers"))?;
            if len > self.buf.len() {
                return Err(NetError::Missing(format!(
                    "a netlink answer of {len} bytes did not fit in {} bytes",
                    self.buf.len()
                )));
            }
            let data = &self.buf[..len];
            let mut at = 0;
            while at + 16 <= data.len() {
                // nlmsg_len, the first field of every message's header.
                let mlen = u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
                    as usize;
                if mlen < 16 || at + mlen > data.len() {
                    break;
                }
                // An answer that does not parse is skipped, as netlink-proto does.
                if let Ok(m) =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[at..at + mlen])
                {
                    let i = m.header.sequence_number.wrapping_sub(base) as usize;
                    if answers.file(i, m.payload) && i + 1 == n {
                        done = true;
                    }
                }
                at += mlen.next_multiple_of(4);
            }
        }
        answers.finish()
    }

    /// [`Batch::send`] then [`Batch::answers`].
    pub fn run(&mut self, reqs: Vec<Req>) -> Result<Made, NetError> {
        let sent = self.send(reqs)?;
        self.answers(sent)
    }
}

/// A batch's answers as they arrive: each request's replies, and the first error that its
/// request does not tolerate.
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
pub struct Plan {
    pub host_veth: String,
    pub host_mac: [u8; 6],
    /// The pod end's MAC, chosen here (as the kernel would: random, locally administered) so
    /// ADD need not look the pod end up to report it.
    pub pod_mac: [u8; 6],
    /// The host veth's alias: the attachment it serves (`nodewire_proto::veth_alias`).
    pub alias: String,
    pub pod_ifname: String,
    pub mtu: u32,
}

/// The veth pair, created: each end's index in its own netns (the MACs are the plan's).
#[derive(Debug, Clone)]
pub struct Veth {
    pub host_index: u32,
    pub pod_index: u32,
}

/// The veth pair being made on a thread of its own ([`start_veth`]).
pub struct VethJob(futures::channel::oneshot::Receiver<Result<Pair, NetError>>);

/// The veth pair, made, with a socket in each netns to finish the wiring ([`Pair::wire`]).
pub struct Pair {
    pub veth: Veth,
    /// When the pair was ready (since [`start_veth`]; for the debug log).
    pub made_at: std::time::Duration,
    host: Batch,
    pod: Batch,
}

/// Starts making the veth pair on a thread of its own, which:
///
/// 1. creates the pair with one request from the host netns: the host end here, the pod end
///    directly inside `ns` (`IFLA_NET_NS_FD`) with the MAC chosen in `p`, both down (the kernel
///    refuses to bring a veth end up before its peer exists: ENOTCONN). A stale host link of
///    the same name (a pod recreated under its old name), or the pod's interface left by an
///    earlier ADD, is deleted and the pair made again;
/// 2. sets the host end's IPv6 sysctls ([`host_sysctls`]);
/// 3. opens a netlink socket in the pod netns (entering it for good: the thread ends here);
///    both ends' indexes are asked by name, one on each side ([`ifindex`]).
///
/// Creating the pair is ~0.5 ms of kernel work done inside the sending thread's syscall, and
/// meanwhile the caller's thread (the async runtime's only one) talks HTTP/2 to ipamd. If any
/// step fails after the pair was made, the thread deletes it (the pod end goes with it).
pub fn start_veth(ns: File, netns: String, plan: Plan) -> Result<VethJob, NetError> {
    let t0 = std::time::Instant::now();
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::Builder::new()
        .name("veth".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let _ = tx.send(make_pair(&ns, &netns, &plan, t0));
        })
        .map_err(io("starting the veth thread"))?;
    Ok(VethJob(rx))
}

impl VethJob {
    /// Waits for the thread.
    pub async fn wait(self) -> Result<Pair, NetError> {
        self.0.await.unwrap_or(Err(NetError::ThreadDied))
    }
}

impl Pair {
    /// Wires both sides for `ip` ([`pod_reqs`], [`host_reqs`]): two batches, both sent before
    /// either is read. `table` is the ENI's route table; main (254) for the primary ENI.
    pub fn wire(&mut self, ip: Ipv4Addr, table: u32, p: &Plan) -> Result<(), NetError> {
        let sp = self.pod.send(pod_reqs(&self.veth, p, ip));
        let sh = self.host.send(host_reqs(&self.veth, p, ip, table));
        let rp = sp.and_then(|s| self.pod.answers(s));
        let rh = sh.and_then(|s| self.host.answers(s));
        rp.and(rh).map(|_| ())
    }

    /// Deletes the pair (the pod end goes with the host end).
    pub fn delete(&mut self, p: &Plan) -> Result<(), NetError> {
        self.host.run(vec![del_link(&p.host_veth)]).map(|_| ())
    }
}

fn make_pair(ns: &File, netns: &str, p: &Plan, t0: std::time::Instant) -> Result<Pair, NetError> {
    let mut host = Batch::open()?;
    match make_pair_on(&mut host, ns, netns, p) {
        Ok((veth, pod)) => Ok(Pair {
            veth,
            made_at: t0.elapsed(),
            host,
            pod,
        }),
        Err(e) => {
            // Whatever was made goes (a missing link is not an error here).
            let _ = host.run(vec![del_link(&p.host_veth)]);
            Err(e)
        }
    }
}

fn make_pair_on(
    host: &mut Batch,
    ns: &File,
    netns: &str,
    p: &Plan,
) -> Result<(Veth, Batch), NetError> {
    let mut pod = None;
    let made = match host.run(create_reqs(ns, p)) {
        Err(NetError::Netlink { source, .. }) if is_exists(&source) => {
            // The host name is taken by a stale veth, or the pod already has the ifname (a
            // repeated ADD). Remove both and try once more.
            host.run(vec![del_link(&p.host_veth)])?;
            let mut b = in_netns(ns, netns, Batch::open)??;
            b.run(vec![del_link(&p.pod_ifname)])?;
            pod = Some(b);
            host.run(create_reqs(ns, p))?
        }
        other => other?,
    };
    drop(made);
    let host_index = ifindex(&host.sock, &p.host_veth)?;
    host_sysctls(&p.host_veth)?;
    let pod = match pod {
        Some(b) => b,
        None => {
            // For good: nothing after this needs the host netns but the host socket, whose
            // netns was fixed when it was made, and the thread ends here.
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| io(format!("entering netns {netns}"))(e.into()))?;
            Batch::open()?
        }
    };
    let pod_index = ifindex(&pod.sock, &p.pod_ifname)?;
    let veth = Veth {
        host_index,
        pod_index,
    };
    Ok((veth, pod))
}

/// The index of link `name` in the netns of `sock` (SIOCGIFINDEX, what `if_nametoindex` asks):
/// a name lookup in the kernel, where a netlink look-up would have the kernel describe the
/// whole link (~1.5 KiB) and us parse it.
fn ifindex(sock: &impl AsRawFd, name: &str) -> Result<u32, NetError> {
    let missing = || NetError::Missing(format!("link {name} did not appear"));
    let b = name.as_bytes();
    if b.is_empty() || b.len() >= libc::IFNAMSIZ {
        return Err(missing());
    }
    // SAFETY: ifreq is plain C data, valid all-zero.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFINDEX reads the NUL-terminated name from and writes the index into the
    // ifreq it is given, which lives across the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENODEV) => missing(),
            _ => io(format!("looking up the index of {name}"))(e),
        });
    }
    // SAFETY: SIOCGIFINDEX succeeded, so the union holds the index.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex } as u32)
}

/// The host veth's IPv6 sysctls, as upstream sets them before bringing it up: no router
/// advertisements taken from a pod, redirects accepted, no forwarding. A kernel without IPv6
/// has no such files (not an error). Written from the host netns (/proc/sys/net is the
/// writer's netns).
pub fn host_sysctls(host_veth: &str) -> Result<(), NetError> {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::Mode;
    use std::io::Write;
    let d = format!("/proc/sys/net/ipv6/conf/{host_veth}");
    // The directory once, then each file by its name in it (one path walk, not three).
    let dir = match openat(
        nix::fcntl::AT_FDCWD,
        d.as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(f) => f,
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(io(d)(e.into())),
    };
    for (k, val) in [
        ("accept_ra", "0"),
        ("accept_redirects", "1"),
        ("forwarding", "0"),
    ] {
        let written = openat(&dir, k, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(std::io::Error::from)
            .and_then(|f| File::from(f).write_all(val.as_bytes()));
        match written {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("{d}/{k}"))(e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Creating the pair (host end here, peer in `ns`).
///
/// Both ends are created with one TX and one RX queue, the number a veth uses anyway. Without
/// the counts the kernel allocates one queue per possible CPU and then trims the real count to
/// one, and trimming TX queues on a registered device waits for an expedited RCU grace period
/// under the RTNL lock: twice per pair, ~0.15 ms each here, and it stalls every other netlink
/// user on the node meanwhile.
fn create_reqs(ns: &File, p: &Plan) -> Vec<Req> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(p.pod_ifname.to_string())
        .mtu(p.mtu)
        .address(p.pod_mac.to_vec())
        .setns_by_fd(ns.as_raw_fd())
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
        .build();
    let veth = LinkVeth::new(&p.host_veth, "unused")
        .mtu(p.mtu)
        .address(p.host_mac.to_vec())
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    vec![Req::new(
        RouteNetlinkMessage::NewLink(veth),
        CREATE,
        "creating the veth pair",
    )]
}

/// Inside the pod, one batch: the interface up, `<ip>/32`, `169.254.1.1 scope link`,
/// `default via 169.254.1.1`, and the gateway's permanent neighbour entry pointing at the host
/// veth's MAC.
pub fn pod_reqs(v: &Veth, p: &Plan, ip: Ipv4Addr) -> Vec<Req> {
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
    vec![
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
    ]
}

/// On the host (the veth's sysctls were set when it was made), one batch: the veth up and
/// tagged with its attachment (the kernel ignores IFLA_IFALIAS at creation), `<ip>/32 dev
/// <veth>` in main, rule `to <ip> lookup main` (512) and, for a secondary ENI, `from <ip>
/// lookup <table>` (1536).
/// `table` is the ENI's route table; main (254) for the primary ENI.
pub fn host_reqs(v: &Veth, p: &Plan, ip: Ipv4Addr, table: u32) -> Vec<Req> {
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
    reqs
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
