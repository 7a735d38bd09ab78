//! Volumes on the node side: sparse backing files, loop devices, and the Nitro-style device
//! directory (`disk/by-id/nvme-Amazon_Elastic_Block_Store_vol…` and the requested name as
//! symlinks to the loop device, plus `serial/<loopN>` holding the volume id without its dash,
//! the role the NVMe serial plays on EC2).
//!
//! Loop devices are managed with util-linux `losetup`, which handles the find-a-free-device race
//! between concurrent users.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

const GIB: u64 = 1 << 30;

pub fn serial(volume_id: &str) -> String {
    volume_id.replace('-', "")
}

pub fn by_id_name(volume_id: &str) -> String {
    format!("nvme-Amazon_Elastic_Block_Store_{}", serial(volume_id))
}

fn run(cmd: &mut Command) -> io::Result<String> {
    // Its own process group: a terminal's Ctrl-C is for the program driving the simulation (which
    // may be tearing it down), not for a `losetup --detach` half way through.
    let out = std::os::unix::process::CommandExt::process_group(cmd, 0).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Backing store of every volume and snapshot of one simulation.
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

impl Store {
    pub fn new(root: PathBuf) -> io::Result<Store> {
        fs::create_dir_all(root.join("volumes"))?;
        fs::create_dir_all(root.join("snapshots"))?;
        Ok(Store { root })
    }

    pub fn volume_file(&self, id: &str) -> PathBuf {
        self.root.join("volumes").join(format!("{id}.img"))
    }

    pub fn snapshot_file(&self, id: &str) -> PathBuf {
        self.root.join("snapshots").join(format!("{id}.img"))
    }

    /// A sparse file of the volume's size, filled from the snapshot when there is one.
    pub fn create(&self, id: &str, size_gib: u32, from_snapshot: Option<&str>) -> io::Result<()> {
        let f = self.volume_file(id);
        if let Some(s) = from_snapshot {
            sparse_copy(&self.snapshot_file(s), &f)?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&f)?;
        file.set_len(size_gib as u64 * GIB)
    }

    pub fn delete(&self, id: &str) -> io::Result<()> {
        remove_if_exists(&self.volume_file(id))
    }

    /// Copies the volume's data. A volume without a backing file (an instance's root volume,
    /// which is not simulated) gives an empty snapshot: volumes made from it start zeroed.
    pub fn snapshot(&self, snap: &str, vol: &str) -> io::Result<()> {
        let src = self.volume_file(vol);
        if !src.exists() {
            return fs::File::create(self.snapshot_file(snap)).map(drop);
        }
        sparse_copy(&src, &self.snapshot_file(snap))
    }

    pub fn delete_snapshot(&self, snap: &str) -> io::Result<()> {
        remove_if_exists(&self.snapshot_file(snap))
    }

    /// Grows the backing file; refreshes the capacity of every loop device bound to it.
    pub fn resize(&self, id: &str, size_gib: u32, loop_devs: &[String]) -> io::Result<()> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.volume_file(id))?;
        if f.metadata()?.len() < size_gib as u64 * GIB {
            f.set_len(size_gib as u64 * GIB)?;
        }
        for d in loop_devs {
            run(Command::new("losetup").arg("--set-capacity").arg(d))?;
        }
        Ok(())
    }

    /// Binds the volume to a free loop device and exposes it in `dev_dir`. Returns `/dev/loopN`.
    pub fn attach(
        &self,
        id: &str,
        dev_dir: &Path,
        device: &str,
        nitro: bool,
    ) -> io::Result<String> {
        let dev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(self.volume_file(id)))?;
        if let Err(e) = expose(id, dev_dir, device, nitro, &dev) {
            let _ = detach_loop(&dev);
            return Err(e);
        }
        Ok(dev)
    }

    /// Removes the device's names and frees its loop device (both are tried; the first error
    /// is reported).
    pub fn detach(&self, id: &str, dev_dir: &Path, device: &str, loop_dev: &str) -> io::Result<()> {
        let names = unexpose(id, dev_dir, device, loop_dev);
        let freed = detach_loop(loop_dev);
        names.and(freed)
    }
}

/// The names a requested device gets in the node's device directory. On Nitro both the
/// requested name and the by-id name point at the NVMe device; on Xen `/dev/sdX` shows up as
/// `xvdX`.
fn names(id: &str, device: &str, nitro: bool) -> Vec<PathBuf> {
    let base = device.trim_start_matches("/dev/");
    let base = if nitro {
        base.to_string()
    } else {
        base.strip_prefix("sd")
            .map_or(base.to_string(), |r| format!("xvd{r}"))
    };
    let mut v = vec![PathBuf::from(base)];
    if nitro {
        v.push(Path::new("disk/by-id").join(by_id_name(id)));
    }
    v
}

fn expose(id: &str, dev_dir: &Path, device: &str, nitro: bool, dev: &str) -> io::Result<()> {
    let r = try_expose(id, dev_dir, device, nitro, dev);
    if r.is_err() {
        let _ = unexpose(id, dev_dir, device, dev);
    }
    r
}

fn try_expose(id: &str, dev_dir: &Path, device: &str, nitro: bool, dev: &str) -> io::Result<()> {
    let kname = dev.trim_start_matches("/dev/");
    fs::create_dir_all(dev_dir.join("serial"))?;
    fs::write(dev_dir.join("serial").join(kname), serial(id))?;
    for n in names(id, device, nitro) {
        let p = dev_dir.join(n);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        remove_if_exists(&p)?;
        std::os::unix::fs::symlink(dev, &p)?;
    }
    Ok(())
}

fn unexpose(id: &str, dev_dir: &Path, device: &str, dev: &str) -> io::Result<()> {
    for n in names(id, device, true)
        .into_iter()
        .chain(names(id, device, false))
    {
        remove_if_exists(&dev_dir.join(n))?;
    }
    remove_if_exists(&dev_dir.join("serial").join(dev.trim_start_matches("/dev/")))
}

pub fn detach_loop(dev: &str) -> io::Result<()> {
    match run(Command::new("losetup").arg("--detach").arg(dev)) {
        Ok(_) => Ok(()),
        // Already gone is fine for cleanup.
        Err(e) if !Path::new(dev).exists() || e.to_string().contains("No such device") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Loop devices currently bound to a file under `root` (compared by path components, so
/// `/tmp/vs-1` does not match `/tmp/vs-12/…`).
pub fn loops_under(root: &Path) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Dev {
        name: String,
        #[serde(rename = "back-file")]
        back_file: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct List {
        loopdevices: Vec<Dev>,
    }
    let Ok(out) =
        run(Command::new("losetup").args(["--list", "--json", "--output", "NAME,BACK-FILE"]))
    else {
        return vec![];
    };
    let under = |f: &str| Path::new(f.trim_end_matches(" (deleted)")).starts_with(root);
    serde_json::from_str::<List>(&out)
        .map(|l| {
            l.loopdevices
                .into_iter()
                .filter(|d| d.back_file.as_deref().is_some_and(under))
                .map(|d| d.name)
                .collect()
        })
        .unwrap_or_default()
}

fn sparse_copy(from: &Path, to: &Path) -> io::Result<()> {
    run(Command::new("cp").arg("--sparse=always").arg(from).arg(to)).map(|_| ())
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(
            by_id_name("vol-0abc"),
            "nvme-Amazon_Elastic_Block_Store_vol0abc"
        );
        assert_eq!(
            names("vol-1", "/dev/xvdaa", true),
            vec![
                PathBuf::from("xvdaa"),
                PathBuf::from("disk/by-id/nvme-Amazon_Elastic_Block_Store_vol1")
            ]
        );
        assert_eq!(
            names("vol-1", "/dev/sdf", false),
            vec![PathBuf::from("xvdf")]
        );
    }
}
