//! Named network namespaces (`/run/netns/NAME`, compatible with `ip netns`) and running code
//! inside one: a socket keeps the namespace it was created in, so listeners and netlink
//! connections are opened on a helper thread that entered the namespace.

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub const NETNS_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn io_err(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// Creates a named network namespace (like `ip netns add`).
pub fn create(name: &str) -> io::Result<()> {
    std::fs::create_dir_all(NETNS_DIR)?;
    let p = path(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)?;
    let target = p.clone();
    let r = std::thread::spawn(move || -> io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| io_err("unshare(CLONE_NEWNET)", e))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| io_err("bind-mounting the namespace", e))
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?;
    if r.is_err() {
        let _ = std::fs::remove_file(&p);
    }
    r
}

/// Deletes a named network namespace; its links and their peers go with it. Missing is fine.
pub fn delete(name: &str) -> io::Result<()> {
    let p = path(name);
    if !p.exists() {
        return Ok(());
    }
    match umount2(&p, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(io_err("unmounting the namespace", e)),
    }
    std::fs::remove_file(&p).or_else(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Ok(())
        } else {
            Err(e)
        }
    })
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Runs `f` on a fresh thread inside namespace `name` and returns its result.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let ns = File::open(path(name))?;
    std::thread::spawn(move || -> io::Result<T> {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| io_err("setns", e))?;
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// Opens an rtnetlink connection whose socket lives in namespace `name`; the connection task is
/// spawned on the current tokio runtime.
pub fn netlink(name: &str) -> io::Result<rtnetlink::Handle> {
    let rt = tokio::runtime::Handle::current();
    let (conn, handle, _) = run_in(name, move || {
        let _g = rt.enter();
        rtnetlink::new_connection()
    })??;
    tokio::spawn(conn);
    Ok(handle)
}

/// Binds a TCP listener inside namespace `name`.
pub fn tcp_listener(name: &str, addr: std::net::SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let l = run_in(name, move || std::net::TcpListener::bind(addr))??;
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

/// Writes a sysctl (`net/ipv4/ip_forward` style path) inside namespace `name`.
pub fn sysctl(name: &str, key: &str, value: &str) -> io::Result<()> {
    let (key, value) = (key.to_string(), value.to_string());
    run_in(name, move || {
        std::fs::write(Path::new("/proc/sys").join(&key), &value)
    })?
}

/// Reads a file as seen from inside namespace `name` (e.g. `/proc/thread-self/net/netstat`).
pub fn read(name: &str, file: &str) -> io::Result<String> {
    let file = file.to_string();
    run_in(name, move || std::fs::read_to_string(file))?
}
