//! The gRPC service vpc-cni calls, on a unix socket (mode 0600, a stale socket is replaced).

use crate::cloud::Cloud;
use crate::daemon::{AddError, Ipamd};
use crate::datastore::{Key, PodMeta};
use nodewire_proto::IPAM_PROTOCOL_VERSION;
use nodewire_proto::ipam::ipam_server::{Ipam, IpamServer};
use nodewire_proto::ipam::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct Service<C: Cloud> {
    pub ipamd: Arc<Ipamd<C>>,
}

fn check_version(v: u32) -> Result<(), Status> {
    if v != IPAM_PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "client speaks ipam protocol {v}, this ipamd speaks {IPAM_PROTOCOL_VERSION}: upgrade vpc-cni and ipamd together"
        )));
    }
    Ok(())
}

fn key(k: Option<AttachmentKey>) -> Result<Key, Status> {
    let k = k.ok_or_else(|| Status::invalid_argument("missing attachment key"))?;
    if k.container_id.is_empty() || k.network_name.is_empty() || k.ifname.is_empty() {
        return Err(Status::invalid_argument(
            "network_name, container_id and ifname are required",
        ));
    }
    Ok(Key {
        network: k.network_name,
        container: k.container_id,
        ifname: k.ifname,
    })
}

#[tonic::async_trait]
impl<C: Cloud> Ipam for Service<C> {
    async fn add(&self, req: Request<AddRequest>) -> Result<Response<AddReply>, Status> {
        let r = req.into_inner();
        check_version(r.client_version)?;
        let k = key(r.key)?;
        let pod = r.pod.unwrap_or_default();
        let meta = PodMeta {
            namespace: pod.namespace,
            name: pod.name,
            host_ifname: r.host_ifname,
        };
        match self.ipamd.add(&k, &meta).await {
            Ok(a) => Ok(Response::new(AddReply {
                ipv4: a.ip.to_string(),
                route_table: a.route_table,
                device_number: a.device_number,
                vpc_cidrs: self
                    .ipamd
                    .node
                    .vpc_cidrs
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
                external_snat: self.ipamd.cfg.external_snat,
                mtu: self.ipamd.cfg.eni_mtu,
                from_prefix: self.ipamd.limits.per_slot == 16,
                existing: a.existing,
            })),
            Err(e @ AddError::Exhausted(_)) => Err(Status::resource_exhausted(e.to_string())),
            Err(e @ AddError::Timeout(_)) => Err(Status::unavailable(e.to_string())),
            Err(e @ AddError::Checkpoint(_)) => Err(Status::internal(e.to_string())),
        }
    }

    async fn del(&self, req: Request<DelRequest>) -> Result<Response<DelReply>, Status> {
        let r = req.into_inner();
        check_version(r.client_version)?;
        let k = key(r.key)?;
        // On a task of its own: a client that gives up (its timeout, its process exiting) must
        // not cancel a release halfway.
        let ipamd = self.ipamd.clone();
        let done = tokio::spawn(async move { ipamd.del(&k, r.unused).await });
        match done.await {
            Ok(Some(a)) => Ok(Response::new(DelReply {
                ipv4: a.ip.to_string(),
                route_table: a.route_table,
            })),
            Ok(None) => Ok(Response::new(DelReply::default())),
            Err(e) => Err(Status::internal(format!("DEL task failed: {e}"))),
        }
    }

    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckReply>, Status> {
        let r = req.into_inner();
        check_version(r.client_version)?;
        let k = key(r.key)?;
        match self.ipamd.lookup(&k).await {
            Some((ip, route_table)) if r.ipv4.is_empty() || ip.to_string() == r.ipv4 => {
                Ok(Response::new(CheckReply { route_table }))
            }
            // NotFound as for an unknown key: this (key, address) pair is not held.
            Some((ip, _)) => Err(Status::not_found(format!(
                "the attachment holds {ip}, not {}",
                r.ipv4
            ))),
            None => Err(Status::not_found(
                "ipamd holds no address for this attachment",
            )),
        }
    }

    async fn gc(&self, req: Request<GcRequest>) -> Result<Response<GcReply>, Status> {
        let r = req.into_inner();
        check_version(r.client_version)?;
        let valid: Vec<Key> = r
            .valid
            .into_iter()
            .map(|k| key(Some(k)))
            .collect::<Result<_, _>>()?;
        let released = self
            .ipamd
            .gc(&r.network_name, &valid)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(GcReply {
            released: released
                .into_iter()
                .map(|k| AttachmentKey {
                    network_name: k.network,
                    container_id: k.container,
                    ifname: k.ifname,
                })
                .collect(),
        }))
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        check_version(req.into_inner().client_version)?;
        let (ready, reason) = self.ipamd.status().await;
        Ok(Response::new(StatusReply { ready, reason }))
    }
}

/// Binds the unix socket (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let l = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves until `shutdown` resolves; in-flight calls finish first.
pub async fn serve<C: Cloud>(
    ipamd: Arc<Ipamd<C>>,
    listener: tokio::net::UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<IpamServer<Service<C>>>().await;
    tonic::transport::Server::builder()
        .add_service(health_svc)
        .add_service(IpamServer::new(Service { ipamd }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await
}
