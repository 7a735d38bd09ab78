//! The node's edge to the kernel and the filesystem tools: mount table and mount(2)/umount(2)
//! (through nix), blkid, mkfs, resize. Every tool is run with an argument vector — never a
//! shell string.

use nix::mount::MsFlags;
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

/// Runs a tool; `Ok(exit code, stdout)` when it exited with one of the `ok` codes.
fn run_ok(prog: &str, args: &[&str], ok: &[i32]) -> Result<(i32, String), MountError> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| MountError::Io(format!("running {prog}"), e))?;
    let code = out.status.code().unwrap_or(-1);
    if !ok.contains(&code) {
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

fn run(prog: &str, args: &[&str]) -> Result<(i32, String), MountError> {
    run_ok(prog, args, &[0])
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

/// How much of each end of a device must read as zeros for it to count as blank without
/// blkid: the signatures blkid knows (filesystems incl. btrfs at 64 KiB, partition tables and
/// their backups, LVM, MD RAID 0.90 in the last 64 KiB and 1.x at the start, LUKS, ZFS label 0)
/// sit in the first or the last 128 KiB.
const BLANK_ENDS: u64 = 128 << 10;

/// Whether both ends of the device are all zeros (a new EBS volume): a 256 KiB read, where
/// `blkid -p` probes every known signature one by one (~7 ms).
pub fn zeroed_ends(dev: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(dev)?;
    let size = f.seek(SeekFrom::End(0))?;
    let mut buf = vec![0u8; BLANK_ENDS.min(size) as usize];
    for at in [0, size.saturating_sub(BLANK_ENDS)] {
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(&mut buf)?;
        if buf.iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The filesystem on a device, `None` when it is blank.
pub fn fs_on(dev: &Path) -> Result<Option<String>, MountError> {
    if zeroed_ends(dev).map_err(|e| MountError::Io(format!("reading {}", dev.display()), e))? {
        return Ok(None);
    }
    let d = dev.to_string_lossy();
    // Exit 2: blkid found nothing.
    let (code, out) = run_ok(
        "blkid",
        &["-p", "-s", "TYPE", "-s", "PTTYPE", "-o", "export", &d],
        &[0, 2],
    )?;
    if code == 2 {
        return Ok(None);
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

/// Splits mount options into mount(2) flags and the filesystem's own option string, as mount(8)
/// does for the flags it knows.
pub fn split_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "defaults" | "rw" => {}
            "ro" => flags |= MsFlags::MS_RDONLY,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "lazytime" => flags |= MsFlags::MS_LAZYTIME,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

fn sys(what: String, r: nix::Result<()>) -> Result<(), MountError> {
    r.map_err(|e| MountError::Io(what, e.into()))
}

/// mount(2) of `dev` at `target` (no mount(8): one process less on every stage).
pub fn mount(dev: &Path, target: &Path, fs: &str, options: &[String]) -> Result<(), MountError> {
    let (flags, data) = split_options(options);
    let data = (!data.is_empty()).then_some(data.as_str());
    sys(
        format!("mounting {} ({fs}) at {}", dev.display(), target.display()),
        nix::mount::mount(Some(dev), target, Some(fs), flags, data),
    )
}

/// Bind-mounts `src` at `target`, then applies read-only and the per-mount flags.
pub fn bind(
    src: &Path,
    target: &Path,
    readonly: bool,
    options: &[String],
) -> Result<(), MountError> {
    let what = || format!("bind-mounting {} at {}", src.display(), target.display());
    sys(
        what(),
        nix::mount::mount(
            Some(src),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ),
    )?;
    let (mut flags, _) = split_options(options);
    if readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    if !flags.is_empty() {
        let r = nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
            None::<&str>,
        );
        if let Err(e) = r {
            let _ = umount(target);
            return sys(what(), Err(e));
        }
    }
    Ok(())
}

pub fn umount(target: &Path) -> Result<(), MountError> {
    sys(
        format!("unmounting {}", target.display()),
        nix::mount::umount2(target, nix::mount::MntFlags::empty()),
    )
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
    fn blank_means_zeroed_ends() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("dev");
        let f = std::fs::File::create(&p).expect("file");
        f.set_len(8 << 20).expect("size");
        assert!(zeroed_ends(&p).expect("read"));
        for at in [1080u64, (8 << 20) - 512] {
            let mut g = std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .expect("open");
            g.seek(SeekFrom::Start(at)).expect("seek");
            g.write_all(&[0x53, 0xef]).expect("write");
            assert!(!zeroed_ends(&p).expect("read"), "signature at {at}");
            g.seek(SeekFrom::Start(at)).expect("seek");
            g.write_all(&[0, 0]).expect("clear");
        }
        // A device smaller than a MiB.
        let small = dir.path().join("small");
        std::fs::write(&small, [0u8; 4096]).expect("small");
        assert!(zeroed_ends(&small).expect("read"));
    }

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let o = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (f, d) = split_options(&o(&["noatime", "ro", "nouuid", "discard"]));
        assert_eq!(f, MsFlags::MS_NOATIME | MsFlags::MS_RDONLY);
        assert_eq!(d, "nouuid,discard");
        assert_eq!(
            split_options(&o(&["defaults"])),
            (MsFlags::empty(), String::new())
        );
    }

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
