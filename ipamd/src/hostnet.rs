//! Host networking for the node's ENIs (netlink through rtnetlink), idempotent so a restart
//! re-applies it without duplicates:
//!
//! * primary ENI: MTU only (its address and routes are the OS's);
//! * secondary ENI at device d: MTU, up, its primary address with the subnet's prefix length,
//!   route table d + 1 holding `<gw>/32 scope link` and `default via <gw>`, the kernel's subnet
//!   route removed from main, rule `from <ENI IP> lookup d+1` at priority 32765.

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteProtocol, RouteScope};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

pub const ENI_RULE_PRIORITY: u32 = 32765;
const MAIN_TABLE: u32 = 254;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("no link with MAC {0} appeared")]
    NoLink(String),
    #[error("netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("pod host teardown: {0}")]
    Pod(#[from] nodewire_cni::net::NetError),
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Netlink { what, source }
}

/// One secondary ENI's host setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniNet {
    pub mac: String,
    pub primary_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub table: u32,
    pub mtu: u32,
}

pub struct HostNet {
    h: Handle,
}

fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ESRCH || m.raw_code() == -libc::ENOENT)
}

fn priority(r: &RuleMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RuleAttribute::Priority(p) => Some(*p),
        _ => None,
    })
}

fn has(r: &RuleMessage, want: impl Fn(&RuleAttribute) -> bool) -> bool {
    r.attributes.iter().any(want)
}

impl HostNet {
    /// IPv4 rules for which `keep` holds.
    async fn rules(&self, keep: impl Fn(&RuleMessage) -> bool) -> Result<Vec<RuleMessage>, Error> {
        let mut out = Vec::new();
        let mut rules = self.h.rule().get(IpVersion::V4).execute();
        while let Some(r) = rules.try_next().await.map_err(nl("listing rules"))? {
            if keep(&r) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Deletes rules; ones already gone are fine.
    async fn delete_rules(&self, rules: Vec<RuleMessage>, what: &str) -> Result<(), Error> {
        for r in rules {
            match self.h.rule().del(r).execute().await {
                Err(e) if !is_missing(&e) => return Err(nl(what)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Opens a netlink connection in the current network namespace.
    pub fn new() -> Result<HostNet, Error> {
        let (conn, h, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(HostNet { h })
    }

    /// The index of the link with `mac`, waiting up to `timeout` for it to appear.
    pub async fn wait_link(&self, mac: &str, timeout: Duration) -> Result<u32, Error> {
        let want = mac.to_ascii_lowercase();
        let deadline = Instant::now() + timeout;
        loop {
            let mut links = self.h.link().get().execute();
            while let Some(l) = links.try_next().await.map_err(nl("listing links"))? {
                let m = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(b) if b.len() == 6 => Some(
                        b.iter()
                            .map(|x| format!("{x:02x}"))
                            .collect::<Vec<_>>()
                            .join(":"),
                    ),
                    _ => None,
                });
                if m.as_deref() == Some(want.as_str()) {
                    return Ok(l.header.index);
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::NoLink(mac.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The name of the link with `mac`.
    pub async fn link_name(&self, mac: &str) -> Result<String, Error> {
        let idx = self.wait_link(mac, Duration::from_secs(10)).await?;
        let mut links = self.h.link().get().match_index(idx).execute();
        while let Some(l) = links.try_next().await.map_err(nl("reading a link"))? {
            for a in &l.attributes {
                if let LinkAttribute::IfName(n) = a {
                    return Ok(n.clone());
                }
            }
        }
        Err(Error::NoLink(mac.to_string()))
    }

    /// Sysctls as upstream sets them: loose reverse-path filtering on the primary interface
    /// (replies to pods on secondary ENIs arrive there) and IPv4 forwarding for pod traffic.
    pub fn sysctls(primary_if: &str) -> Result<(), Error> {
        for (key, value) in [
            (format!("net/ipv4/conf/{primary_if}/rp_filter"), "2"),
            ("net/ipv4/ip_forward".to_string(), "1"),
        ] {
            let path = std::path::Path::new("/proc/sys").join(&key);
            // Already right (set by the privileged init container, `ipamd --host-setup`): no
            // write, so ipamd itself runs with a read-only /proc/sys.
            if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
                continue;
            }
            std::fs::write(&path, value)?;
        }
        Ok(())
    }

    /// Exactly one `fwmark <mark>/<mark> lookup main` at `priority`.
    pub async fn ensure_fwmark_rule(&self, mark: u32, priority_: u32) -> Result<(), Error> {
        let at_prio = self
            .rules(|r| {
                priority(r) == Some(priority_) && has(r, |a| matches!(a, RuleAttribute::FwMark(_)))
            })
            .await?;
        // Ours with the current mark (one kept), and stale ones left by another mark setting.
        let (mut ours, stale): (Vec<_>, Vec<_>) = at_prio
            .into_iter()
            .partition(|r| has(r, |a| matches!(a, RuleAttribute::FwMark(m) if *m == mark)));
        let mut doomed = stale;
        if ours.len() > 1 {
            doomed.extend(ours.drain(1..));
        }
        self.delete_rules(doomed, "removing a stale fwmark rule")
            .await?;
        if !ours.is_empty() {
            return Ok(());
        }
        let mut req = self
            .h
            .rule()
            .add()
            .v4()
            .fw_mark(mark)
            .table_id(MAIN_TABLE)
            .priority(priority_)
            .action(RuleAction::ToTable);
        req.message_mut()
            .attributes
            .push(RuleAttribute::FwMask(mark));
        req.execute().await.map_err(nl("adding the fwmark rule"))
    }

    /// The primary ENI: only the MTU.
    pub async fn setup_primary(&self, mac: &str, mtu: u32) -> Result<(), Error> {
        let idx = self.wait_link(mac, Duration::from_secs(10)).await?;
        self.h
            .link()
            .set(LinkUnspec::new_with_index(idx).mtu(mtu).build())
            .execute()
            .await
            .map_err(nl("setting the primary ENI's MTU"))
    }

    /// A secondary ENI (see the module docs).
    pub async fn setup_eni(&self, e: &EniNet) -> Result<(), Error> {
        let idx = self.wait_link(&e.mac, Duration::from_secs(30)).await?;
        self.h
            .link()
            .set(LinkUnspec::new_with_index(idx).mtu(e.mtu).up().build())
            .execute()
            .await
            .map_err(nl("link up"))?;
        // Exactly one global address: the ENI's primary IP with the subnet's prefix length.
        let mut have_ours = false;
        let mut addrs = self.h.address().get().set_link_index_filter(idx).execute();
        let mut stale = Vec::new();
        while let Some(a) = addrs.try_next().await.map_err(nl("listing addresses"))? {
            let ip = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            match ip {
                Some(ip) if ip == e.primary_ip && a.header.prefix_len == e.subnet.prefix_len() => {
                    have_ours = true
                }
                Some(ip) if !ip.is_link_local() => stale.push(a),
                _ => {}
            }
        }
        for a in stale {
            self.h
                .address()
                .del(a)
                .execute()
                .await
                .map_err(nl("removing a stale address"))?;
        }
        if !have_ours {
            self.h
                .address()
                .add(idx, e.primary_ip.into(), e.subnet.prefix_len())
                .execute()
                .await
                .map_err(nl("adding the ENI address"))?;
        }
        let gw = Ipv4Addr::from(u32::from(e.subnet.network()) + 1);
        self.h
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(gw, 32)
                    .output_interface(idx)
                    .scope(RouteScope::Link)
                    .table_id(e.table)
                    .build(),
            )
            .replace()
            .execute()
            .await
            .map_err(nl("gateway route"))?;
        self.h
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gw)
                    .output_interface(idx)
                    .table_id(e.table)
                    .build(),
            )
            .replace()
            .execute()
            .await
            .map_err(nl("default route"))?;
        // The kernel's connected route in main would send the subnet out of this ENI.
        let mut subnet_route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(e.subnet.network(), e.subnet.prefix_len())
            .output_interface(idx)
            .table_id(MAIN_TABLE)
            .build();
        subnet_route.header.protocol = RouteProtocol::Unspec;
        // Match whatever scope and protocol the kernel gave it (as `ip route del` does).
        subnet_route.header.scope = RouteScope::NoWhere;
        match self.h.route().del(subnet_route).execute().await {
            Ok(()) => {}
            Err(err) if is_missing(&err) => {}
            Err(err) => return Err(nl("removing the subnet route from main")(err)),
        }
        self.ensure_rule(e.primary_ip, e.table).await
    }

    /// Exactly one `from <ip> lookup <table>` at priority 32765.
    async fn ensure_rule(&self, ip: Ipv4Addr, table: u32) -> Result<(), Error> {
        let mine = self
            .rules(|r| {
                priority(r) == Some(ENI_RULE_PRIORITY)
                    && r.header.src_len == 32
                    && has(
                        r,
                        |a| matches!(a, RuleAttribute::Source(IpAddr::V4(s)) if *s == ip),
                    )
            })
            .await?;
        let table_of = |r: &RuleMessage| {
            r.attributes
                .iter()
                .find_map(|a| match a {
                    RuleAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(r.header.table as u32)
        };
        let (mut good, stale): (Vec<_>, Vec<_>) =
            mine.into_iter().partition(|r| table_of(r) == table);
        let mut extra = stale;
        if good.len() > 1 {
            extra.extend(good.drain(1..));
        }
        self.delete_rules(extra, "removing a stale ENI rule")
            .await?;
        if good.is_empty() {
            self.h
                .rule()
                .add()
                .v4()
                .source_prefix(ip, 32)
                .table_id(table)
                .priority(ENI_RULE_PRIORITY)
                .action(RuleAction::ToTable)
                .execute()
                .await
                .map_err(nl("adding the ENI rule"))?;
        }
        Ok(())
    }

    /// The links in this namespace: name → alias ("" when none).
    pub async fn link_aliases(&self) -> Result<std::collections::BTreeMap<String, String>, Error> {
        let mut out = std::collections::BTreeMap::new();
        let mut links = self.h.link().get().execute();
        while let Some(l) = links.try_next().await.map_err(nl("listing links"))? {
            let mut name = None;
            let mut alias = String::new();
            for a in &l.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = Some(n.clone()),
                    LinkAttribute::IfAlias(s) => alias = s.clone(),
                    _ => {}
                }
            }
            if let Some(n) = name {
                out.insert(n, alias);
            }
        }
        Ok(out)
    }

    /// Removes a pod's host rules (`to <ip>` at 512, `from <ip>` at 1536) and its `/32` route in
    /// main, as vpc-cni defines them: on every release (DEL, GC, a pod gone while ipamd was
    /// down), before the address can go to another pod. Returns how many rules and routes went.
    pub async fn prune_pod(&self, ip: Ipv4Addr) -> Result<usize, Error> {
        Ok(nodewire_cni::net::teardown_host(&self.h, ip).await?)
    }

    /// Removes an ENI's rule (its table goes with the link).
    pub async fn remove_eni(&self, ip: Ipv4Addr) -> Result<(), Error> {
        let ours = self
            .rules(|r| {
                priority(r) == Some(ENI_RULE_PRIORITY)
                    && has(
                        r,
                        |a| matches!(a, RuleAttribute::Source(IpAddr::V4(s)) if *s == ip),
                    )
            })
            .await?;
        self.delete_rules(ours, "removing the ENI rule").await
    }
}
