//! The node's edge to the kernel and the filesystem tools: mount table, mount/umount, blkid,
//! mkfs, resize. Every tool is run with an argument vector — never a shell string.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{cmd}: {msg}")]
    Tool { cmd: String, msg: String },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Runs a tool; `Ok(exit code, stdout)` when it exited 0 (or, for blkid, whatever it exited).
fn run(prog: &str, args: &[&str]) -> Result<(i32, String), MountError> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| MountError::Io(format!("running {prog}"), e))?;
    let code = out.status.code().unwrap_or(-1);
    if code != 0 && prog != "blkid" {
        return Err(MountError::Tool {
            cmd: format!("{prog} {}", args.join(" ")),
            msg: format!(
                "exit {code}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok((code, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// "major:minor" of the mounted device.
    pub dev: String,
    /// Path inside the device's filesystem that is mounted (bind mounts of files differ).
    pub root: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            let p: Vec<&str> = post.split(' ').collect();
            Some(MountEntry {
                dev: f.get(2)?.to_string(),
                root: unescape(f.get(3)?),
                mount_point: PathBuf::from(unescape(f.get(4)?)),
                fs_type: p.first()?.to_string(),
                source: unescape(p.get(1)?),
            })
        })
        .collect()
}

pub fn mounts() -> Result<Vec<MountEntry>, MountError> {
    let t = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| MountError::Io("reading /proc/self/mountinfo".into(), e))?;
    Ok(parse_mountinfo(&t))
}

/// The top-most mount at `path`, if any.
pub fn mounted_at(path: &Path) -> Result<Option<MountEntry>, MountError> {
    Ok(mounts()?.into_iter().rev().find(|m| m.mount_point == path))
}

/// "major:minor" of a block device.
pub fn dev_id(dev: &Path) -> Result<String, MountError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dev).map_err(|e| MountError::Io(dev.display().to_string(), e))?;
    let r = m.rdev();
    Ok(format!("{}:{}", libc::major(r), libc::minor(r)))
}

/// Size in bytes of a block device (or a file bind-mounted from one).
pub fn device_size(dev: &Path) -> Result<u64, MountError> {
    let mut f =
        std::fs::File::open(dev).map_err(|e| MountError::Io(dev.display().to_string(), e))?;
    f.seek(SeekFrom::End(0))
        .map_err(|e| MountError::Io(dev.display().to_string(), e))
}

/// The filesystem on a device, `None` when it is blank.
pub fn fs_on(dev: &Path) -> Result<Option<String>, MountError> {
    let d = dev.to_string_lossy();
    let (code, out) = run(
        "blkid",
        &["-p", "-s", "TYPE", "-s", "PTTYPE", "-o", "export", &d],
    )?;
    match code {
        0 => {}
        // blkid: nothing found.
        2 => return Ok(None),
        c => {
            return Err(MountError::Tool {
                cmd: format!("blkid -p {d}"),
                msg: format!("exit {c}"),
            });
        }
    }
    for l in out.lines() {
        if let Some(t) = l.strip_prefix("TYPE=") {
            return Ok(Some(t.to_string()));
        }
        if let Some(t) = l.strip_prefix("PTTYPE=") {
            return Ok(Some(format!("partition table {t}")));
        }
    }
    Ok(None)
}

pub fn mkfs(fs: &str, dev: &Path, opts: &[String]) -> Result<(), MountError> {
    let prog = format!("mkfs.{fs}");
    let d = dev.to_string_lossy().into_owned();
    let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
    if fs == "xfs" {
        args.push("-f");
    } else {
        // -F: a whole device, no question; -m0: no root-reserved blocks on a data volume.
        args.extend(["-F", "-m0"]);
    }
    // Quiet, and skip the discard pass over a fresh EBS volume (all blocks read as zero).
    if fs == "xfs" {
        args.extend(["-q", "-K"]);
    } else {
        args.extend(["-q", "-E", "nodiscard"]);
    }
    args.push(&d);
    run(&prog, &args).map(|_| ())
}

pub fn mount(dev: &Path, target: &Path, fs: &str, options: &[String]) -> Result<(), MountError> {
    let mut args = vec!["-t".to_string(), fs.to_string()];
    if !options.is_empty() {
        args.push("-o".into());
        args.push(options.join(","));
    }
    args.push(dev.to_string_lossy().into_owned());
    args.push(target.to_string_lossy().into_owned());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run("mount", &a).map(|_| ())
}

pub fn bind(
    src: &Path,
    target: &Path,
    readonly: bool,
    options: &[String],
) -> Result<(), MountError> {
    let s = src.to_string_lossy();
    let t = target.to_string_lossy();
    run("mount", &["--bind", &s, &t])?;
    let mut remount = vec!["remount".to_string(), "bind".to_string()];
    if readonly {
        remount.push("ro".into());
    }
    remount.extend(options.iter().cloned());
    if remount.len() > 2 {
        run("mount", &["-o", &remount.join(","), &t])?;
    }
    Ok(())
}

pub fn umount(target: &Path) -> Result<(), MountError> {
    run("umount", &[&target.to_string_lossy()]).map(|_| ())
}

/// Grows the filesystem mounted at `mount_point` from `dev` to the device's size.
pub fn grow(fs: &str, dev: &Path, mount_point: &Path) -> Result<(), MountError> {
    if fs == "xfs" {
        run("xfs_growfs", &[&mount_point.to_string_lossy()]).map(|_| ())
    } else {
        run("resize2fs", &[&dev.to_string_lossy()]).map(|_| ())
    }
}

/// (total, available, used)
pub type Usage = (i64, i64, i64);

/// Bytes and inodes of the filesystem at `path`.
pub fn usage(path: &Path) -> Result<(Usage, Usage), MountError> {
    let s = nix::sys::statvfs::statvfs(path)
        .map_err(|e| MountError::Io(path.display().to_string(), e.into()))?;
    let f = s.fragment_size() as i64;
    let bytes = (
        s.blocks() as i64 * f,
        s.blocks_available() as i64 * f,
        (s.blocks() as i64 - s.blocks_free() as i64) * f,
    );
    let inodes = (
        s.files() as i64,
        s.files_available() as i64,
        s.files() as i64 - s.files_free() as i64,
    );
    Ok((bytes, inodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let t = "36 35 98:0 / /mnt1 rw,noatime master:1 - ext4 /dev/loop3 rw,errors=continue\n\
                 37 35 7:3 /dev/loop3 /var/lib/kubelet/pods/a\\040b/vol rw shared:2 - devtmpfs udev rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].dev, "98:0");
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt1"));
        assert_eq!(m[0].fs_type, "ext4");
        assert_eq!(m[0].source, "/dev/loop3");
        assert_eq!(
            m[1].mount_point,
            PathBuf::from("/var/lib/kubelet/pods/a b/vol")
        );
        assert_eq!(m[1].root, "/dev/loop3");
    }
}
