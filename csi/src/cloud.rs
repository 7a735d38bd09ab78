//! The EC2 edge of the controller: the EBS calls it makes through `aws-sdk-ec2`, each counted
//! and timed for Prometheus (`aws_ebs_csi_api_*`, upstream's names), with errors reduced to
//! their AWS code.

use crate::params::VolumeSpec;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification, VolumeType};
use nodewire_aws::aws_sdk_ec2;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;

/// Longest one EC2 call (SDK retries included) may take.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// An EC2 error with its AWS code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("EC2 {action}: {code}: {message}")]
pub struct CloudError {
    pub action: &'static str,
    pub code: String,
    pub message: String,
}

impl CloudError {
    /// The id does not exist, or is not even well-formed (`vol-fake`): the same to a CO.
    pub fn is_not_found(&self) -> bool {
        self.code.ends_with(".NotFound") || self.code.ends_with(".Malformed")
    }
    pub fn is_throttle(&self) -> bool {
        matches!(
            self.code.as_str(),
            "RequestLimitExceeded" | "Throttling" | "ThrottlingException"
        )
    }
}

/// A volume as the controller needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub id: String,
    pub size_gib: i64,
    pub az: String,
    pub state: String,
    pub volume_type: String,
    pub iops: Option<i64>,
    pub throughput: Option<i64>,
    pub snapshot_id: Option<String>,
    /// (instance id, device, state)
    pub attachments: Vec<(String, String, String)>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    pub volume_id: String,
    pub size_gib: i64,
    pub state: String,
    pub start_secs: i64,
    pub tags: BTreeMap<String, String>,
}

/// The latest modification of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModState {
    pub state: String,
    pub target_size_gib: i64,
}

/// Prometheus metrics for EC2 calls.
#[derive(Clone)]
pub struct Metrics {
    duration: HistogramVec,
    errors: IntCounterVec,
    throttles: IntCounterVec,
    requests: IntCounterVec,
}

impl Metrics {
    pub fn new(reg: &Registry) -> Metrics {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "aws_ebs_csi_api_request_duration_seconds",
                "EC2 request latency (successful calls)",
            ),
            &["request"],
        )
        .expect("static metric definition");
        let errors = IntCounterVec::new(
            Opts::new("aws_ebs_csi_api_request_errors_total", "EC2 request errors"),
            &["request", "code"],
        )
        .expect("static metric definition");
        let throttles = IntCounterVec::new(
            Opts::new(
                "aws_ebs_csi_api_request_throttles_total",
                "EC2 requests throttled",
            ),
            &["request"],
        )
        .expect("static metric definition");
        let requests = IntCounterVec::new(
            Opts::new("nodewire_ebs_csi_ec2_requests_total", "EC2 requests made"),
            &["request"],
        )
        .expect("static metric definition");
        for c in [&errors, &throttles, &requests] {
            let _ = reg.register(Box::new(c.clone()));
        }
        let _ = reg.register(Box::new(duration.clone()));
        Metrics {
            duration,
            errors,
            throttles,
            requests,
        }
    }
}

/// The controller's EC2 client.
#[derive(Clone)]
pub struct Ec2 {
    pub client: aws_sdk_ec2::Client,
    metrics: Metrics,
}

fn tags_of(t: &[Tag]) -> BTreeMap<String, String> {
    t.iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect()
}

fn tag_spec(kind: ResourceType, tags: &BTreeMap<String, String>) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect(),
        ))
        .build()
}

fn volume_of(v: &aws_sdk_ec2::types::Volume) -> Volume {
    Volume {
        id: v.volume_id().unwrap_or_default().to_string(),
        size_gib: v.size().unwrap_or(0) as i64,
        az: v.availability_zone().unwrap_or_default().to_string(),
        state: v
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        volume_type: v
            .volume_type()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        iops: v.iops().map(|i| i as i64),
        throughput: v.throughput().map(|i| i as i64),
        snapshot_id: v.snapshot_id().filter(|s| !s.is_empty()).map(String::from),
        attachments: v
            .attachments()
            .iter()
            .map(|a| {
                (
                    a.instance_id().unwrap_or_default().to_string(),
                    a.device().unwrap_or_default().to_string(),
                    a.state()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                )
            })
            .collect(),
        tags: tags_of(v.tags()),
    }
}

fn snapshot_of(s: &aws_sdk_ec2::types::Snapshot) -> Snapshot {
    Snapshot {
        id: s.snapshot_id().unwrap_or_default().to_string(),
        volume_id: s.volume_id().unwrap_or_default().to_string(),
        size_gib: s.volume_size().unwrap_or(0) as i64,
        state: s
            .state()
            .map(|x| x.as_str().to_string())
            .unwrap_or_default(),
        start_secs: s.start_time().map(|t| t.secs()).unwrap_or(0),
        tags: tags_of(s.tags()),
    }
}

impl Ec2 {
    pub fn new(client: aws_sdk_ec2::Client, metrics: Metrics) -> Ec2 {
        Ec2 { client, metrics }
    }

    /// Runs one EC2 call, recording it.
    async fn call<T, E, F>(&self, action: &'static str, f: F) -> Result<T, CloudError>
    where
        F: Future<Output = Result<T, E>>,
        E: ProvideErrorMetadata + std::fmt::Display,
    {
        let t = Instant::now();
        self.metrics.requests.with_label_values(&[action]).inc();
        // A hung call must not hold an RPC (and its in-flight key) forever.
        let r = match tokio::time::timeout(CALL_TIMEOUT, f).await {
            Ok(r) => r,
            Err(_) => {
                self.metrics
                    .errors
                    .with_label_values(&[action, "Timeout"])
                    .inc();
                return Err(CloudError {
                    action,
                    code: "Timeout".into(),
                    message: format!("no answer within {CALL_TIMEOUT:?}"),
                });
            }
        };
        match r {
            Ok(v) => {
                self.metrics
                    .duration
                    .with_label_values(&[action])
                    .observe(t.elapsed().as_secs_f64());
                Ok(v)
            }
            Err(e) => {
                let err = CloudError {
                    action,
                    code: e.code().unwrap_or("Unknown").to_string(),
                    message: e
                        .message()
                        .map(String::from)
                        .unwrap_or_else(|| e.to_string()),
                };
                if err.is_throttle() {
                    self.metrics.throttles.with_label_values(&[action]).inc();
                }
                self.metrics
                    .errors
                    .with_label_values(&[action, &err.code])
                    .inc();
                Err(err)
            }
        }
    }

    /// Probe: a dry run that needs the network and credentials, nothing else.
    pub async fn dry_run(&self) -> Result<(), CloudError> {
        match self
            .call(
                "DescribeAvailabilityZones",
                self.client
                    .describe_availability_zones()
                    .dry_run(true)
                    .send(),
            )
            .await
        {
            Err(e) if e.code == "DryRunOperation" => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    }

    pub async fn first_zone(&self) -> Result<String, CloudError> {
        let r = self
            .call(
                "DescribeAvailabilityZones",
                self.client.describe_availability_zones().send(),
            )
            .await?;
        r.availability_zones()
            .iter()
            .find_map(|z| z.zone_name().map(String::from))
            .ok_or_else(|| CloudError {
                action: "DescribeAvailabilityZones",
                code: "NoZones".into(),
                message: "the region has no availability zone".into(),
            })
    }

    pub async fn create_volume(
        &self,
        spec: &VolumeSpec,
        az: &str,
        snapshot: Option<&str>,
        token: &str,
    ) -> Result<Volume, CloudError> {
        let r = self
            .call(
                "CreateVolume",
                self.client
                    .create_volume()
                    .availability_zone(az)
                    .size(spec.size_gib as i32)
                    .volume_type(VolumeType::from(spec.volume_type))
                    .set_iops(spec.iops.map(|i| i as i32))
                    .set_throughput(spec.throughput.map(|i| i as i32))
                    .encrypted(spec.encrypted)
                    .set_kms_key_id(spec.kms_key_id.clone())
                    .set_snapshot_id(snapshot.map(String::from))
                    .tag_specifications(tag_spec(ResourceType::Volume, &spec.tags))
                    .client_token(token)
                    .send(),
            )
            .await?;
        Ok(Volume {
            id: r.volume_id().unwrap_or_default().to_string(),
            size_gib: r.size().unwrap_or(0) as i64,
            az: r.availability_zone().unwrap_or_default().to_string(),
            state: r
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            volume_type: spec.volume_type.to_string(),
            iops: r.iops().map(|i| i as i64),
            throughput: r.throughput().map(|i| i as i64),
            snapshot_id: r.snapshot_id().filter(|s| !s.is_empty()).map(String::from),
            attachments: vec![],
            tags: tags_of(r.tags()),
        })
    }

    /// The volume, or `None` when EC2 does not know it.
    pub async fn volume(&self, id: &str) -> Result<Option<Volume>, CloudError> {
        match self
            .call(
                "DescribeVolumes",
                self.client.describe_volumes().volume_ids(id).send(),
            )
            .await
        {
            Ok(r) => Ok(r.volumes().first().map(volume_of)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn delete_volume(&self, id: &str) -> Result<(), CloudError> {
        self.call(
            "DeleteVolume",
            self.client.delete_volume().volume_id(id).send(),
        )
        .await
        .map(|_| ())
    }

    pub async fn attach(&self, id: &str, instance: &str, device: &str) -> Result<(), CloudError> {
        self.call(
            "AttachVolume",
            self.client
                .attach_volume()
                .volume_id(id)
                .instance_id(instance)
                .device(device)
                .send(),
        )
        .await
        .map(|_| ())
    }

    pub async fn detach(&self, id: &str, instance: &str) -> Result<(), CloudError> {
        self.call(
            "DetachVolume",
            self.client
                .detach_volume()
                .volume_id(id)
                .instance_id(instance)
                .send(),
        )
        .await
        .map(|_| ())
    }

    /// Device names mapped on the instance (root included) → volume id; `None` when the
    /// instance does not exist.
    pub async fn instance_devices(
        &self,
        instance: &str,
    ) -> Result<Option<BTreeMap<String, String>>, CloudError> {
        let r = match self
            .call(
                "DescribeInstances",
                self.client
                    .describe_instances()
                    .instance_ids(instance)
                    .send(),
            )
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(i) = r
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance))
        else {
            return Ok(None);
        };
        Ok(Some(
            i.block_device_mappings()
                .iter()
                .filter_map(|m| {
                    Some((
                        m.device_name()?.to_string(),
                        m.ebs()
                            .and_then(|e| e.volume_id())
                            .unwrap_or_default()
                            .to_string(),
                    ))
                })
                .collect(),
        ))
    }

    pub async fn modify(
        &self,
        id: &str,
        size_gib: Option<i64>,
        volume_type: Option<&str>,
        iops: Option<i64>,
        throughput: Option<i64>,
    ) -> Result<(), CloudError> {
        self.call(
            "ModifyVolume",
            self.client
                .modify_volume()
                .volume_id(id)
                .set_size(size_gib.map(|s| s as i32))
                .set_volume_type(volume_type.map(VolumeType::from))
                .set_iops(iops.map(|i| i as i32))
                .set_throughput(throughput.map(|i| i as i32))
                .send(),
        )
        .await
        .map(|_| ())
    }

    /// The volume's latest modification, if it was ever modified.
    pub async fn modification(&self, id: &str) -> Result<Option<ModState>, CloudError> {
        let r = match self
            .call(
                "DescribeVolumesModifications",
                self.client
                    .describe_volumes_modifications()
                    .volume_ids(id)
                    .send(),
            )
            .await
        {
            Ok(r) => r,
            // EC2's answer for a volume never modified.
            Err(e) if e.code == "InvalidVolumeModification.NotFound" => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(r.volumes_modifications().last().map(|m| ModState {
            state: m
                .modification_state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            target_size_gib: m.target_size().unwrap_or(0) as i64,
        }))
    }

    pub async fn create_tags(
        &self,
        id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), CloudError> {
        self.call(
            "CreateTags",
            self.client
                .create_tags()
                .resources(id)
                .set_tags(Some(
                    tags.iter()
                        .map(|(k, v)| Tag::builder().key(k).value(v).build())
                        .collect(),
                ))
                .send(),
        )
        .await
        .map(|_| ())
    }

    pub async fn delete_tags(&self, id: &str, keys: &[String]) -> Result<(), CloudError> {
        self.call(
            "DeleteTags",
            self.client
                .delete_tags()
                .resources(id)
                .set_tags(Some(
                    keys.iter().map(|k| Tag::builder().key(k).build()).collect(),
                ))
                .send(),
        )
        .await
        .map(|_| ())
    }

    pub async fn create_snapshot(
        &self,
        volume: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<Snapshot, CloudError> {
        let r = self
            .call(
                "CreateSnapshot",
                self.client
                    .create_snapshot()
                    .volume_id(volume)
                    .description(format!("Created by nodewire ebs-csi for volume {volume}"))
                    .tag_specifications(tag_spec(ResourceType::Snapshot, tags))
                    .send(),
            )
            .await?;
        Ok(Snapshot {
            id: r.snapshot_id().unwrap_or_default().to_string(),
            volume_id: volume.to_string(),
            size_gib: r.volume_size().unwrap_or(0) as i64,
            state: r
                .state()
                .map(|x| x.as_str().to_string())
                .unwrap_or_default(),
            start_secs: r.start_time().map(|t| t.secs()).unwrap_or(0),
            tags: tags_of(r.tags()),
        })
    }

    pub async fn snapshot(&self, id: &str) -> Result<Option<Snapshot>, CloudError> {
        match self
            .call(
                "DescribeSnapshots",
                self.client
                    .describe_snapshots()
                    .owner_ids("self")
                    .snapshot_ids(id)
                    .send(),
            )
            .await
        {
            Ok(r) => Ok(r.snapshots().first().map(snapshot_of)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Snapshots matching `filters` (name → values), one page.
    pub async fn snapshots(
        &self,
        filters: &[(&str, &str)],
        max: Option<i32>,
        token: Option<String>,
    ) -> Result<(Vec<Snapshot>, Option<String>), CloudError> {
        let r = self
            .call(
                "DescribeSnapshots",
                self.client
                    .describe_snapshots()
                    .owner_ids("self")
                    .set_filters(Some(
                        filters
                            .iter()
                            .map(|(n, v)| Filter::builder().name(*n).values(*v).build())
                            .collect(),
                    ))
                    .set_max_results(max)
                    .set_next_token(token)
                    .send(),
            )
            .await?;
        Ok((
            r.snapshots().iter().map(snapshot_of).collect(),
            r.next_token().filter(|t| !t.is_empty()).map(String::from),
        ))
    }

    pub async fn delete_snapshot(&self, id: &str) -> Result<(), CloudError> {
        self.call(
            "DeleteSnapshot",
            self.client.delete_snapshot().snapshot_id(id).send(),
        )
        .await
        .map(|_| ())
    }
}
