//! The CNI commands: ADD, DEL, CHECK, GC, STATUS, each a short sequence over the spec core, the
//! ipamd client and the netlink wiring.

use crate::ipam::Ipamd;
use crate::net::{self, MAIN_TABLE, NetError, Plan};
use crate::spec::{self, CniError, Code, Command, Env, NetConf, Wired};
use nodewire_proto::ipam::{AddRequest, AttachmentKey, DelRequest, PodRef};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::time::Duration;

/// How long to wait for ipamd's socket to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// DEL must not hold up pod deletion: past this, ipamd counts as down and DEL tears down locally.
/// Long enough to cover ipamd's start-up (it binds its socket before it has rebuilt its state, and
/// answers once it has), so a DEL during an ipamd restart is still recorded by ipamd itself rather
/// than left to its recovery, which cannot free an address whose veth is still there.
const DEL_TIMEOUT: Duration = Duration::from_secs(20);

impl From<NetError> for CniError {
    fn from(e: NetError) -> CniError {
        match e {
            NetError::NoNetns(p) => CniError::new(
                Code::UnknownContainer,
                format!("network namespace {p} does not exist (was the sandbox already removed?)"),
            ),
            other => CniError::new(Code::Setup, format!("pod network setup failed: {other}")),
        }
    }
}

fn key(env: &Env, conf: &NetConf) -> AttachmentKey {
    AttachmentKey {
        network_name: conf.name.clone(),
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

fn pod_ref(env: &Env) -> PodRef {
    let a = |k| env.arg(k).unwrap_or_default().to_string();
    PodRef {
        namespace: a("K8S_POD_NAMESPACE"),
        name: a("K8S_POD_NAME"),
        uid: a("K8S_POD_UID"),
        infra_container_id: a("K8S_POD_INFRA_CONTAINER_ID"),
    }
}

/// Runs one command; `Some(result)` is printed on stdout. ADD has been started
/// ([`start_add`]) before the runtime was built.
pub async fn run(
    env: &Env,
    conf: &NetConf,
    add_start: Option<AddStart>,
) -> Result<Option<Value>, CniError> {
    match env.command {
        Command::Add => match add_start {
            Some(s) => add(env, conf, s).await.map(Some),
            None => add(env, conf, start_add(env, conf)?).await.map(Some),
        },
        Command::Del => del(env, conf).await.map(|_| None),
        Command::Check => check(env, conf).await.map(|_| None),
        Command::Gc => gc(conf).await.map(|_| None),
        Command::Status => status(conf).await.map(|_| None),
        Command::Version => Ok(Some(spec::version_result(Some(&conf.version)))),
    }
}

/// Two random locally administered unicast MACs: the host veth's and the pod end's.
fn random_macs() -> Result<([u8; 6], [u8; 6]), CniError> {
    let mut b = [0u8; 12];
    let mut got = 0;
    while got < b.len() {
        // SAFETY: getrandom writes at most the given length into the buffer it is given.
        let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(CniError::new(Code::Io, format!("getrandom: {e}")));
            }
        } else {
            got += n as usize;
        }
    }
    let (mut h, mut p) = ([0u8; 6], [0u8; 6]);
    h.copy_from_slice(&b[..6]);
    p.copy_from_slice(&b[6..]);
    Ok((spec::local_mac(h), spec::local_mac(p)))
}

/// ADD's first steps, taken before the async runtime is built: the pod netns is opened (a
/// missing sandbox must not cost an address) and the veth pair started on a thread of its own
/// (`net::start_veth`), so the kernel builds it while this thread starts the runtime and asks
/// ipamd for the address.
pub struct AddStart {
    veth: net::VethJob,
    plan: Plan,
    t0: std::time::Instant,
}

impl AddStart {
    /// ADD ends before it could ask ipamd (the runtime did not start): waits for the veth
    /// thread and deletes whatever pair it made.
    pub fn abandon(self) {
        if let Ok(mut pair) = futures::executor::block_on(self.veth.wait()) {
            let _ = pair.delete(&self.plan);
        }
    }
}

pub fn start_add(env: &Env, conf: &NetConf) -> Result<AddStart, CniError> {
    let t0 = std::time::Instant::now();
    let (host_mac, pod_mac) = random_macs()?;
    let ns = net::open_netns(&env.netns)?;
    let plan = Plan {
        host_veth: spec::host_veth_name(&conf.veth_prefix, env),
        host_mac,
        pod_mac,
        alias: nodewire_proto::veth_alias(&env.container_id, &env.ifname),
        pod_ifname: env.ifname.clone(),
        mtu: conf.mtu,
    };
    let veth = net::start_veth(ns, env.netns.clone(), plan.clone())?;
    Ok(AddStart { veth, plan, t0 })
}

async fn add(env: &Env, conf: &NetConf, start: AddStart) -> Result<Value, CniError> {
    let AddStart { veth, plan, t0 } = start;
    let host_veth = &plan.host_veth;
    let k = key(env, conf);
    // ipamd picks the address while the veth thread builds the pair.
    let ask = async {
        let mut ipamd = Ipamd::connect(&conf.ipamd_socket, CONNECT_TIMEOUT).await?;
        ipamd
            .add(AddRequest {
                key: Some(k.clone()),
                pod: Some(pod_ref(env)),
                netns: env.netns.clone(),
                host_ifname: host_veth.clone(),
                client_version: 0,
            })
            .await
    };
    let reply = match ask.await {
        Ok(r) => r,
        Err(e) => {
            // No address: the pair made meanwhile goes (its pod end with it). (If making it
            // failed, the veth thread has already deleted what it made.)
            if let Ok(mut pair) = veth.wait().await {
                let _ = pair.delete(&plan);
            }
            return Err(e);
        }
    };
    let t_ask = t0.elapsed();
    let made = veth.wait().await;
    let release = |why: CniError| async {
        if let Ok(host) = net::host() {
            let _ = net::delete_link(&host, host_veth).await;
            if let Ok(ip) = reply.ipv4.parse::<Ipv4Addr>() {
                let _ = net::teardown_host(&host, ip).await;
            }
        }
        // Unused (no cooldown) only when this ADD got the address: a repeated ADD's may be in
        // use by the pod the first ADD wired.
        if let Err(m) = ipamd_del(conf, &k, env, !reply.existing).await {
            tracing::warn!(error = %m, "giving the address back to ipamd failed")
        }
        why
    };
    let ip = match reply.ipv4.parse::<Ipv4Addr>() {
        Ok(ip) => ip,
        Err(_) => {
            let e = CniError::new(
                Code::Ipamd,
                format!("ipamd answered a bad address {:?}", reply.ipv4),
            );
            return Err(release(e).await);
        }
    };
    // Table ids 0 and 1 are main (1 is a pre-1.20 upstream encoding).
    let table = if reply.route_table <= 1 {
        MAIN_TABLE
    } else {
        reply.route_table
    };
    let wired = made.and_then(|mut pair| pair.wire(ip, table, &plan).map(|()| pair));
    match wired {
        Ok(pair) => {
            tracing::debug!(?t_ask, t_veth = ?pair.made_at, total = ?t0.elapsed(), "ADD timings (since ADD began: address, veth, all)");
            tracing::info!(%ip, table, veth = %host_veth, container = %env.container_id, "ADD");
            let w = Wired {
                host_veth: host_veth.clone(),
                host_mac: spec::mac_string(&plan.host_mac),
                pod_ifname: env.ifname.clone(),
                pod_mac: spec::mac_string(&plan.pod_mac),
                netns: env.netns.clone(),
                ip,
                mtu: conf.mtu,
            };
            Ok(spec::add_result(&conf.version, &w, conf.dns.as_ref()))
        }
        Err(e) => {
            tracing::warn!(%ip, error = %e, "ADD failed after the address was granted: unwinding");
            Err(release(e.into()).await)
        }
    }
}

/// `unused`: the address never reached a running pod (ADD's unwind), so ipamd skips its cooldown.
async fn ipamd_del(
    conf: &NetConf,
    k: &AttachmentKey,
    env: &Env,
    unused: bool,
) -> Result<Option<Ipv4Addr>, String> {
    let call = async {
        let mut c = Ipamd::connect(&conf.ipamd_socket, CONNECT_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let r = c
            .del(DelRequest {
                key: Some(k.clone()),
                pod: Some(pod_ref(env)),
                client_version: 0,
                unused,
            })
            .await
            // ipamd itself never fails a DEL; any error here (version skew, a broken
            // connection) means it could not be asked, and must not block pod deletion.
            .map_err(|s| format!("ipamd DEL: {:?}: {}", s.code(), s.message()))?;
        Ok(r.ipv4.parse().ok())
    };
    match tokio::time::timeout(DEL_TIMEOUT, call).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer from {} within {DEL_TIMEOUT:?}",
            conf.ipamd_socket.display()
        )),
    }
}

/// DEL never fails because of state: a vanished netns, a missing prevResult, an address ipamd
/// does not know, or ipamd being down all end in success.
///
/// ipamd owns the host side of a release: it removes the pod's rules and /32 route under its
/// lock, before the address can go to anyone else, so DEL touches nothing itself when ipamd
/// answers. Only when ipamd cannot be asked does DEL tear down locally, from prevResult or the
/// host veth's route, and only what still belongs to this attachment (the host veth's alias
/// names it): a pod recreated under the same name has a host veth of the same name, and an old
/// sandbox's late DEL must not unwire the new one.
async fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let k = key(env, conf);
    let why = match ipamd_del(conf, &k, env, false).await {
        Ok(released) => {
            tracing::info!(ip = ?released, container = %env.container_id, "DEL");
            return Ok(());
        }
        Err(m) => m,
    };
    let host = net::host()?;
    let host_veth = spec::host_veth_name(&conf.veth_prefix, env);
    let alias = nodewire_proto::veth_alias(&env.container_id, &env.ifname);
    let mut ip = conf.prev.as_ref().and_then(|p| p.ip);
    if ip.is_none() {
        ip = net::ip_via(&host, &host_veth, &alias).await.ok().flatten();
    }
    let Some(ip) = ip else {
        tracing::warn!(error = %why, "DEL: ipamd not reached and no address known; nothing to tear down");
        return Ok(());
    };
    // Tear down only what is still this attachment's: its /32 route on its own veth (tagged
    // with its alias, or untagged by an older version under the same name), or no route left.
    let owner = match net::route_owner(&host, ip).await {
        Ok(None) => None,
        Ok(Some((name, a))) if a == alias || (a.is_empty() && name == host_veth) => None,
        Ok(Some((name, a))) => Some(format!("{name} ({a})")),
        Err(e) => Some(format!("unknown: {e}")),
    };
    match owner {
        Some(owner) => {
            tracing::warn!(%ip, %owner, error = %why, "DEL: ipamd not reached; {ip} is not (provably) this attachment's any more, left alone");
        }
        None => match net::teardown_host(&host, ip).await {
            Ok(n) => {
                tracing::warn!(%ip, removed = n, error = %why, "DEL: ipamd not reached; host side torn down locally (ipamd frees the address when it restarts)")
            }
            Err(e) => tracing::warn!(%ip, error = %e, "DEL: host teardown failed"),
        },
    }
    Ok(())
}

fn drift(what: String) -> CniError {
    CniError::new(Code::Drift, format!("pod network drifted: {what}"))
}

async fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf.prev.as_ref().ok_or_else(|| {
        CniError::new(Code::InvalidConfig, "CHECK needs prevResult in the config")
    })?;
    let ip = prev.ip.ok_or_else(|| {
        CniError::new(
            Code::InvalidConfig,
            "prevResult holds no IPv4 address to check",
        )
    })?;
    let host_veth = prev
        .host_veth
        .clone()
        .unwrap_or_else(|| spec::host_veth_name(&conf.veth_prefix, env));
    let mut c = Ipamd::connect(&conf.ipamd_socket, CONNECT_TIMEOUT).await?;
    let table = c.check(key(env, conf), ip.to_string()).await?;
    let table = if table <= 1 { MAIN_TABLE } else { table };
    let (_ns, pod) = net::pod(&env.netns)?;
    let host = net::host()?;
    let (hidx, hmac) = net::link(&host, &host_veth)
        .await?
        .ok_or_else(|| drift(format!("host veth {host_veth} is missing")))?;
    let (pidx, _) = net::link(&pod, &env.ifname)
        .await?
        .ok_or_else(|| drift(format!("{} is missing in the pod", env.ifname)))?;
    if !net::addresses(&pod, pidx).await?.contains(&(ip, 32)) {
        return Err(drift(format!("{} lacks {ip}/32", env.ifname)));
    }
    let proutes = net::routes(&pod, MAIN_TABLE).await?;
    let gw = spec::POD_GATEWAY;
    if !proutes
        .iter()
        .any(|(d, l, g, o, _)| *d == gw && *l == 32 && g.is_none() && *o == Some(pidx))
    {
        return Err(drift(format!(
            "the pod has no route to {gw} on {}",
            env.ifname
        )));
    }
    if !proutes
        .iter()
        .any(|(_, l, g, o, _)| *l == 0 && *g == Some(gw) && *o == Some(pidx))
    {
        return Err(drift(format!("the pod's default route is not via {gw}")));
    }
    let neigh = net::permanent_neighbours(&pod, pidx).await?;
    if !neigh.iter().any(|(a, m)| *a == gw && *m == hmac) {
        return Err(drift(format!(
            "the pod's permanent neighbour {gw} does not point at {host_veth} ({})",
            spec::mac_string(&hmac)
        )));
    }
    if !net::routes(&host, MAIN_TABLE)
        .await?
        .iter()
        .any(|(d, l, g, o, _)| *d == ip && *l == 32 && g.is_none() && *o == Some(hidx))
    {
        return Err(drift(format!(
            "the host has no route {ip}/32 dev {host_veth}"
        )));
    }
    let rules = net::pod_rules(&host, ip).await?;
    if !rules
        .iter()
        .any(|(_, p, t)| *p == net::TO_POD_PRIORITY && *t == MAIN_TABLE)
    {
        return Err(drift(format!(
            "rule 'to {ip} lookup main' priority 512 is missing"
        )));
    }
    let from_ok = rules
        .iter()
        .any(|(_, p, t)| *p == net::FROM_POD_PRIORITY && *t == table);
    if table != MAIN_TABLE && !from_ok {
        return Err(drift(format!(
            "rule 'from {ip} lookup {table}' priority 1536 is missing"
        )));
    }
    Ok(())
}

async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|(c, i)| AttachmentKey {
            network_name: conf.name.clone(),
            container_id: c.clone(),
            ifname: i.clone(),
        })
        .collect();
    let mut c = Ipamd::connect(&conf.ipamd_socket, CONNECT_TIMEOUT).await?;
    let r = c.gc(conf.name.clone(), valid).await?;
    for k in &r.released {
        tracing::info!(container = %k.container_id, ifname = %k.ifname, "GC released");
    }
    Ok(())
}

async fn status(conf: &NetConf) -> Result<(), CniError> {
    let not = |m: String| CniError::new(Code::NotAvailable, m);
    let mut c = Ipamd::connect(&conf.ipamd_socket, CONNECT_TIMEOUT)
        .await
        .map_err(|e| not(format!("{e}")))?;
    let s = c.status().await.map_err(|e| not(e.msg))?;
    if s.ready {
        Ok(())
    } else {
        Err(not(format!(
            "ipamd cannot give an address now: {}",
            s.reason
        )))
    }
}
