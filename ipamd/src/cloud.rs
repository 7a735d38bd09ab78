//! The EC2 and IMDS edge of ipamd: a small trait for the calls ipamd makes, its `aws-sdk-ec2`
//! implementation with per-action call and error counters, and node discovery from IMDS.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    Filter, NetworkInterfaceAttachmentChanges, ResourceType, Tag, TagSpecification,
};
use ipnet::Ipv4Net;
use nodewire_aws::aws_sdk_ec2;
use nodewire_aws::imds::Imds;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Mutex;

/// An EC2 error with its AWS code when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{action}: {code}: {message}")]
pub struct CloudError {
    pub action: &'static str,
    pub code: String,
    pub message: String,
}

impl CloudError {
    pub fn is_throttle(&self) -> bool {
        matches!(
            self.code.as_str(),
            "RequestLimitExceeded" | "Throttling" | "ThrottlingException"
        )
    }
    pub fn is_subnet_exhausted(&self) -> bool {
        matches!(
            self.code.as_str(),
            "InsufficientFreeAddressesInSubnet" | "InsufficientCidrBlocks"
        )
    }
    pub fn is_not_found(&self) -> bool {
        self.code.ends_with(".NotFound")
    }
}

/// An ENI as EC2 reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EniInfo {
    pub id: String,
    pub mac: String,
    pub primary_ip: Option<Ipv4Addr>,
    /// Secondary IPs (the primary excluded).
    pub ips: Vec<Ipv4Addr>,
    pub prefixes: Vec<Ipv4Net>,
    pub subnet_id: String,
    pub status: String,
    pub description: String,
    pub attachment_id: Option<String>,
    pub device_index: Option<u32>,
    pub network_card: u32,
    pub tags: BTreeMap<String, String>,
    /// Its security group ids, sorted.
    pub security_groups: Vec<String>,
}

/// `CreateNetworkInterface` as ipamd issues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEni {
    pub subnet_id: String,
    pub security_groups: Vec<String>,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub ips: u32,
    pub prefixes: u32,
}

/// The EC2 calls ipamd makes.
pub trait Cloud: Send + Sync + 'static {
    fn enis_of(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Vec<EniInfo>, CloudError>> + Send;
    fn eni(&self, eni_id: &str)
    -> impl Future<Output = Result<Option<EniInfo>, CloudError>> + Send;
    fn create_eni(&self, req: NewEni) -> impl Future<Output = Result<EniInfo, CloudError>> + Send;
    fn attach_eni(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> impl Future<Output = Result<String, CloudError>> + Send;
    fn delete_on_termination(
        &self,
        eni_id: &str,
        attachment_id: &str,
    ) -> impl Future<Output = Result<(), CloudError>> + Send;
    fn detach_eni(
        &self,
        attachment_id: &str,
    ) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// Replaces an ENI's security groups (`ModifyNetworkInterfaceAttribute`, `Groups`).
    fn set_security_groups(
        &self,
        eni_id: &str,
        groups: &[String],
    ) -> impl Future<Output = Result<(), CloudError>> + Send;
    fn delete_eni(&self, eni_id: &str) -> impl Future<Output = Result<(), CloudError>> + Send;
    fn assign(
        &self,
        eni_id: &str,
        ips: u32,
        prefixes: u32,
    ) -> impl Future<Output = Result<(Vec<Ipv4Addr>, Vec<Ipv4Net>), CloudError>> + Send;
    fn unassign(
        &self,
        eni_id: &str,
        ips: Vec<Ipv4Addr>,
        prefixes: Vec<Ipv4Net>,
    ) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// `available` ENIs carrying `tag_key` in `vpc_id` (the leaked-ENI sweep).
    fn available_tagged(
        &self,
        vpc_id: &str,
        tag_key: &str,
    ) -> impl Future<Output = Result<Vec<EniInfo>, CloudError>> + Send;
    /// `(IPv4 addresses per interface, ENIs on card 0, hypervisor is nitro)` of an instance type.
    fn instance_type(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<(u32, u32, bool)>, CloudError>> + Send;
}

/// EC2 calls per action: (calls, errors).
#[derive(Debug, Default)]
pub struct CallCounter(Mutex<BTreeMap<&'static str, (u64, u64)>>);

impl CallCounter {
    fn record<T>(&self, action: &'static str, r: &Result<T, CloudError>) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(action).or_default();
        e.0 += 1;
        if r.is_err() {
            e.1 += 1;
        }
    }
    pub fn snapshot(&self) -> BTreeMap<&'static str, (u64, u64)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// [`Cloud`] through `aws-sdk-ec2`.
pub struct SdkCloud {
    pub ec2: aws_sdk_ec2::Client,
    pub calls: CallCounter,
}

fn err<E: ProvideErrorMetadata + std::fmt::Display>(action: &'static str, e: E) -> CloudError {
    CloudError {
        action,
        code: e.code().unwrap_or("Unknown").to_string(),
        message: e
            .message()
            .map(String::from)
            .unwrap_or_else(|| e.to_string()),
    }
}

fn eni_info(e: &aws_sdk_ec2::types::NetworkInterface) -> EniInfo {
    let addrs = e.private_ip_addresses();
    let primary_ip = addrs
        .iter()
        .find(|a| a.primary() == Some(true))
        .and_then(|a| a.private_ip_address())
        .and_then(|s| s.parse().ok());
    EniInfo {
        id: e.network_interface_id().unwrap_or_default().to_string(),
        mac: e.mac_address().unwrap_or_default().to_ascii_lowercase(),
        primary_ip,
        ips: addrs
            .iter()
            .filter(|a| a.primary() != Some(true))
            .filter_map(|a| a.private_ip_address()?.parse().ok())
            .collect(),
        prefixes: e
            .ipv4_prefixes()
            .iter()
            .filter_map(|p| p.ipv4_prefix()?.parse().ok())
            .collect(),
        subnet_id: e.subnet_id().unwrap_or_default().to_string(),
        status: e
            .status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        description: e.description().unwrap_or_default().to_string(),
        attachment_id: e
            .attachment()
            .and_then(|a| a.attachment_id())
            .map(String::from),
        device_index: e
            .attachment()
            .and_then(|a| a.device_index())
            .map(|d| d as u32),
        network_card: e
            .attachment()
            .and_then(|a| a.network_card_index())
            .unwrap_or(0) as u32,
        tags: e
            .tag_set()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect(),
        security_groups: {
            let mut g: Vec<String> = e
                .groups()
                .iter()
                .filter_map(|g| g.group_id().map(String::from))
                .collect();
            g.sort();
            g
        },
    }
}

impl SdkCloud {
    pub fn new(ec2: aws_sdk_ec2::Client) -> SdkCloud {
        SdkCloud {
            ec2,
            calls: CallCounter::default(),
        }
    }

    async fn describe(
        &self,
        filters: Vec<Filter>,
        ids: Vec<String>,
    ) -> Result<Vec<EniInfo>, CloudError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self.ec2.describe_network_interfaces();
            if ids.is_empty() {
                req = req.max_results(1000);
            }
            for f in &filters {
                req = req.filters(f.clone());
            }
            for i in &ids {
                req = req.network_interface_ids(i);
            }
            if let Some(t) = &token {
                req = req.next_token(t);
            }
            let r = req
                .send()
                .await
                .map_err(|e| err("DescribeNetworkInterfaces", e));
            self.calls.record("DescribeNetworkInterfaces", &r);
            let page = r?;
            out.extend(page.network_interfaces().iter().map(eni_info));
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }
}

impl Cloud for SdkCloud {
    async fn enis_of(&self, instance_id: &str) -> Result<Vec<EniInfo>, CloudError> {
        let f = Filter::builder()
            .name("attachment.instance-id")
            .values(instance_id)
            .build();
        self.describe(vec![f], vec![]).await
    }

    async fn eni(&self, eni_id: &str) -> Result<Option<EniInfo>, CloudError> {
        match self.describe(vec![], vec![eni_id.to_string()]).await {
            Ok(v) => Ok(v.into_iter().next()),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create_eni(&self, req: NewEni) -> Result<EniInfo, CloudError> {
        let mut spec = TagSpecification::builder().resource_type(ResourceType::NetworkInterface);
        for (k, v) in &req.tags {
            spec = spec.tags(Tag::builder().key(k).value(v).build());
        }
        let mut b = self
            .ec2
            .create_network_interface()
            .subnet_id(&req.subnet_id)
            .description(&req.description)
            .tag_specifications(spec.build());
        for g in &req.security_groups {
            b = b.groups(g);
        }
        if req.ips > 0 {
            b = b.secondary_private_ip_address_count(req.ips as i32);
        }
        if req.prefixes > 0 {
            b = b.ipv4_prefix_count(req.prefixes as i32);
        }
        let r = b.send().await.map_err(|e| err("CreateNetworkInterface", e));
        self.calls.record("CreateNetworkInterface", &r);
        let out = r?;
        out.network_interface()
            .map(eni_info)
            .ok_or_else(|| CloudError {
                action: "CreateNetworkInterface",
                code: "EmptyReply".into(),
                message: "no networkInterface in the reply".into(),
            })
    }

    async fn attach_eni(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, CloudError> {
        let r = self
            .ec2
            .attach_network_interface()
            .network_interface_id(eni_id)
            .instance_id(instance_id)
            .device_index(device_index as i32)
            .network_card_index(0)
            .send()
            .await
            .map_err(|e| err("AttachNetworkInterface", e));
        self.calls.record("AttachNetworkInterface", &r);
        Ok(r?.attachment_id().unwrap_or_default().to_string())
    }

    async fn delete_on_termination(
        &self,
        eni_id: &str,
        attachment_id: &str,
    ) -> Result<(), CloudError> {
        let r = self
            .ec2
            .modify_network_interface_attribute()
            .network_interface_id(eni_id)
            .attachment(
                NetworkInterfaceAttachmentChanges::builder()
                    .attachment_id(attachment_id)
                    .delete_on_termination(true)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| err("ModifyNetworkInterfaceAttribute", e));
        self.calls.record("ModifyNetworkInterfaceAttribute", &r);
        r.map(drop)
    }

    async fn set_security_groups(&self, eni_id: &str, groups: &[String]) -> Result<(), CloudError> {
        let r = self
            .ec2
            .modify_network_interface_attribute()
            .network_interface_id(eni_id)
            .set_groups(Some(groups.to_vec()))
            .send()
            .await
            .map_err(|e| err("ModifyNetworkInterfaceAttribute", e));
        self.calls.record("ModifyNetworkInterfaceAttribute", &r);
        r.map(drop)
    }

    async fn detach_eni(&self, attachment_id: &str) -> Result<(), CloudError> {
        let r = self
            .ec2
            .detach_network_interface()
            .attachment_id(attachment_id)
            .send()
            .await
            .map_err(|e| err("DetachNetworkInterface", e));
        self.calls.record("DetachNetworkInterface", &r);
        r.map(drop)
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<(), CloudError> {
        let r = self
            .ec2
            .delete_network_interface()
            .network_interface_id(eni_id)
            .send()
            .await
            .map_err(|e| err("DeleteNetworkInterface", e));
        self.calls.record("DeleteNetworkInterface", &r);
        match r {
            Err(e) if e.is_not_found() => Ok(()),
            r => r.map(drop),
        }
    }

    async fn assign(
        &self,
        eni_id: &str,
        ips: u32,
        prefixes: u32,
    ) -> Result<(Vec<Ipv4Addr>, Vec<Ipv4Net>), CloudError> {
        let mut b = self
            .ec2
            .assign_private_ip_addresses()
            .network_interface_id(eni_id);
        if ips > 0 {
            b = b.secondary_private_ip_address_count(ips as i32);
        }
        if prefixes > 0 {
            b = b.ipv4_prefix_count(prefixes as i32);
        }
        let r = b
            .send()
            .await
            .map_err(|e| err("AssignPrivateIpAddresses", e));
        self.calls.record("AssignPrivateIpAddresses", &r);
        let out = r?;
        Ok((
            out.assigned_private_ip_addresses()
                .iter()
                .filter_map(|a| a.private_ip_address()?.parse().ok())
                .collect(),
            out.assigned_ipv4_prefixes()
                .iter()
                .filter_map(|p| p.ipv4_prefix()?.parse().ok())
                .collect(),
        ))
    }

    async fn unassign(
        &self,
        eni_id: &str,
        ips: Vec<Ipv4Addr>,
        prefixes: Vec<Ipv4Net>,
    ) -> Result<(), CloudError> {
        let mut b = self
            .ec2
            .unassign_private_ip_addresses()
            .network_interface_id(eni_id);
        for ip in ips {
            b = b.private_ip_addresses(ip.to_string());
        }
        for p in prefixes {
            b = b.ipv4_prefixes(p.to_string());
        }
        let r = b
            .send()
            .await
            .map_err(|e| err("UnassignPrivateIpAddresses", e));
        self.calls.record("UnassignPrivateIpAddresses", &r);
        r.map(drop)
    }

    async fn available_tagged(
        &self,
        vpc_id: &str,
        tag_key: &str,
    ) -> Result<Vec<EniInfo>, CloudError> {
        let f = vec![
            Filter::builder().name("tag-key").values(tag_key).build(),
            Filter::builder().name("status").values("available").build(),
            Filter::builder().name("vpc-id").values(vpc_id).build(),
        ];
        self.describe(f, vec![]).await
    }

    async fn instance_type(&self, name: &str) -> Result<Option<(u32, u32, bool)>, CloudError> {
        let r = self
            .ec2
            .describe_instance_types()
            .instance_types(aws_sdk_ec2::types::InstanceType::from(name))
            .send()
            .await
            .map_err(|e| err("DescribeInstanceTypes", e));
        self.calls.record("DescribeInstanceTypes", &r);
        let out = r?;
        Ok(out.instance_types().first().and_then(|t| {
            let n = t.network_info()?;
            let card0 = n
                .network_cards()
                .iter()
                .find(|c| {
                    c.network_card_index() == Some(n.default_network_card_index().unwrap_or(0))
                })
                .and_then(|c| c.maximum_network_interfaces())
                .or(n.maximum_network_interfaces())?;
            let nitro = t
                .hypervisor()
                .map(|h| h.as_str() == "nitro")
                .unwrap_or(false)
                || t.bare_metal() == Some(true);
            Some((
                n.ipv4_addresses_per_interface()? as u32,
                card0 as u32,
                nitro,
            ))
        }))
    }
}

/// What IMDS tells about this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub instance_id: String,
    pub instance_type: String,
    pub az: String,
    pub region: String,
    pub primary_mac: String,
    pub primary_ip: Ipv4Addr,
    pub vpc_id: String,
    pub vpc_cidrs: Vec<Ipv4Net>,
    pub subnet_id: String,
    pub subnet_cidr: Ipv4Net,
    pub security_groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Imds(#[from] nodewire_aws::imds::Error),
    #[error("IMDS has no {0}")]
    Missing(String),
    #[error("IMDS returned an invalid {what}: {value:?}")]
    Invalid { what: String, value: String },
}

/// Reads the node's identity and primary ENI from IMDS (IMDSv2).
pub async fn discover(imds: &Imds) -> Result<Node, DiscoveryError> {
    async fn need(imds: &Imds, path: &str) -> Result<String, DiscoveryError> {
        imds.get(path)
            .await?
            .ok_or_else(|| DiscoveryError::Missing(path.to_string()))
    }
    fn parse<T: std::str::FromStr>(what: &str, v: &str) -> Result<T, DiscoveryError> {
        v.trim().parse().map_err(|_| DiscoveryError::Invalid {
            what: what.into(),
            value: v.into(),
        })
    }
    let mac = need(imds, "mac").await?.to_ascii_lowercase();
    let base = format!("network/interfaces/macs/{mac}");
    let cidrs = need(imds, &format!("{base}/vpc-ipv4-cidr-blocks")).await?;
    Ok(Node {
        instance_id: need(imds, "instance-id").await?,
        instance_type: need(imds, "instance-type").await?,
        az: need(imds, "placement/availability-zone").await?,
        region: need(imds, "placement/region").await?,
        primary_ip: parse("local-ipv4", &need(imds, "local-ipv4").await?)?,
        vpc_id: need(imds, &format!("{base}/vpc-id")).await?,
        vpc_cidrs: cidrs
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| parse("vpc-ipv4-cidr-blocks", l))
            .collect::<Result<_, _>>()?,
        subnet_id: need(imds, &format!("{base}/subnet-id")).await?,
        subnet_cidr: parse(
            "subnet-ipv4-cidr-block",
            &need(imds, &format!("{base}/subnet-ipv4-cidr-block")).await?,
        )?,
        security_groups: {
            let mut g: Vec<String> = need(imds, &format!("{base}/security-group-ids"))
                .await?
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            g.sort();
            g
        },
        primary_mac: mac,
    })
}
