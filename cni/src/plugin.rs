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

/// Runs one command; `Some(result)` is printed on stdout.
pub async fn run(env: &Env, conf: &NetConf) -> Result<Option<Value>, CniError> {
    match env.command {
        Command::Add => add(env, conf).await.map(Some),
        Command::Del => del(env, conf).await.map(|_| None),
        Command::Check => check(env, conf).await.map(|_| None),
        Command::Gc => gc(conf).await.map(|_| None),
        Command::Status => status(conf).await.map(|_| None),
        Command::Version => Ok(Some(spec::version_result(Some(&conf.version)))),
    }
}

fn random_mac() -> Result<[u8; 6], CniError> {
    use std::io::Read;
    let mut b = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| CniError::new(Code::Io, format!("reading /dev/urandom: {e}")))?;
    Ok(spec::local_mac(b))
}

async fn add(env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    let t0 = std::time::Instant::now();
    let host_veth = spec::host_veth_name(&conf.veth_prefix, env);
    let host_mac = random_mac()?;
    // The netns first: a missing sandbox must not cost an address.
    let (ns, pod) = net::pod(&env.netns)?;
    let host = net::host()?;
    let mut ipamd = Ipamd::connect(&conf.ipamd_socket, CONNECT_TIMEOUT).await?;
    let t_connect = t0.elapsed();
    let k = key(env, conf);
    let reply = ipamd
        .add(AddRequest {
            key: Some(k.clone()),
            pod: Some(pod_ref(env)),
            netns: env.netns.clone(),
            host_ifname: host_veth.clone(),
            client_version: 0,
        })
        .await?;
    let t_ipamd = t0.elapsed();
    let release = |why: CniError| async {
        let _ = net::delete_link(&host, &host_veth).await;
        if let Ok(ip) = reply.ipv4.parse::<Ipv4Addr>() {
            let _ = net::teardown_host(&host, ip).await;
        }
        if let Err(s) = ipamd_del(conf, &k, env).await {
            tracing::warn!(error = %s, "giving the address back to ipamd failed");
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
    let plan = Plan {
        host_veth: &host_veth,
        host_mac,
        pod_ifname: &env.ifname,
        ip,
        mtu: conf.mtu,
        table,
    };
    let wired = async {
        let v = net::create_veth(&host, &pod, &ns, &plan).await?;
        net::setup_pod(&pod, &v, &plan).await?;
        net::setup_host(&host, &v, &plan).await?;
        Ok::<_, NetError>(v)
    }
    .await;
    match wired {
        Ok(v) => {
            tracing::debug!(?t_connect, ?t_ipamd, total = ?t0.elapsed(), "ADD timings (cumulative)");
            tracing::info!(%ip, table, veth = %host_veth, container = %env.container_id, "ADD");
            let w = Wired {
                host_veth: host_veth.clone(),
                host_mac: spec::mac_string(&host_mac),
                pod_ifname: env.ifname.clone(),
                pod_mac: spec::mac_string(&v.pod_mac),
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

async fn ipamd_del(
    conf: &NetConf,
    k: &AttachmentKey,
    env: &Env,
) -> Result<Option<Ipv4Addr>, String> {
    let mut c = Ipamd::connect(&conf.ipamd_socket, CONNECT_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let r = c
        .del(DelRequest {
            key: Some(k.clone()),
            pod: Some(pod_ref(env)),
            client_version: 0,
        })
        .await
        .map_err(|s| format!("ipamd DEL: {:?}: {}", s.code(), s.message()))?;
    Ok(r.ipv4.parse().ok())
}

/// DEL never fails because of state: a vanished netns, a missing prevResult, an address ipamd
/// does not know, or ipamd being down all end in success. Host rules and the /32 route go
/// before the address is released, so a new pod given the same address is never touched.
async fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let host_veth = spec::host_veth_name(&conf.veth_prefix, env);
    let host = net::host()?;
    let k = key(env, conf);
    let mut ip = conf.prev.as_ref().and_then(|p| p.ip);
    if ip.is_none() {
        ip = net::ip_via(&host, &host_veth).await.ok().flatten();
    }
    if let Some(ip) = ip {
        match net::teardown_host(&host, ip).await {
            Ok(n) => tracing::debug!(%ip, removed = n, "DEL: host rules and route removed"),
            Err(e) => tracing::warn!(%ip, error = %e, "DEL: host teardown failed"),
        }
    }
    match ipamd_del(conf, &k, env).await {
        Ok(released) => {
            // Without prevResult or veth, only ipamd knew the address (it is cooling down now).
            if let (None, Some(r)) = (ip, released)
                && let Err(e) = net::teardown_host(&host, r).await
            {
                tracing::warn!(ip = %r, error = %e, "DEL: host teardown failed");
            }
            tracing::info!(ip = ?ip.or(released), container = %env.container_id, "DEL");
        }
        Err(e) => {
            // ipamd reconciles on restart (the host veth is gone, so the address is freed).
            tracing::warn!(error = %e, ip = ?ip, "DEL: ipamd not reached; host side torn down locally");
        }
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
