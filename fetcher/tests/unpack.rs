//! `fetcher::unpack`: archives built here and unpacked into temp dirs. Tar entries get
//! raw headers, their names copied in as bytes, as the tar writer refuses to spell `..`
//! or an absolute name; zips come from the zip writer (which writes any name), or byte
//! by byte where the test needs headers that lie.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fetcher::unpack::{Archive, Escape, Limits, UnpackError, Unpacked, unpack};
use tar::{EntryType, Header};
use tempfile::TempDir;
use zip::write::SimpleFileOptions;

const FORMATS: [Archive; 3] = [Archive::Tar, Archive::TarGz, Archive::Zip];

/// An entry of a test archive, spelled as the test wants it, however wrong.
#[derive(Debug, Clone)]
enum Item {
    File(&'static str, Vec<u8>, u32),
    Dir(&'static str),
    Symlink(&'static str, &'static str),
}

fn file(name: &'static str, data: &[u8]) -> Item {
    Item::File(name, data.to_vec(), 0o644)
}

/// A raw tar header: the name and link name are copied as bytes into the old fields,
/// so nothing checks them.
fn tar_header(kind: EntryType, name: &str, link: &str, size: u64, mode: u32) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(1_000_000_000);
    let old = header.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_cksum();
    header
}

fn tar_of(entries: &[(Header, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (header, data) in entries {
        builder.append(header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A zip of `items`, with the zip writer (which writes names as it is given them).
fn zip_of(items: &[Item]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for item in items {
        match item {
            Item::File(name, data, mode) => {
                writer
                    .start_file(*name, options.unix_permissions(*mode))
                    .unwrap();
                writer.write_all(data).unwrap();
            }
            Item::Dir(name) => writer.add_directory(*name, options).unwrap(),
            Item::Symlink(name, target) => writer.add_symlink(*name, *target, options).unwrap(),
        }
    }
    writer.finish().unwrap().into_inner()
}

/// A zip of one deflated file written byte by byte, its headers saying `declared` for
/// its size and a made-up checksum.
fn raw_zip(name: &str, deflated: &[u8], declared: u32) -> Vec<u8> {
    let name_len = u16::try_from(name.len()).unwrap();
    let deflated_len = u32::try_from(deflated.len()).unwrap();
    let common = |out: &mut Vec<u8>| {
        out.extend(20u16.to_le_bytes()); // version needed
        out.extend(0u16.to_le_bytes()); // flags
        out.extend(8u16.to_le_bytes()); // deflated
        out.extend(0u16.to_le_bytes()); // time
        out.extend(0x21u16.to_le_bytes()); // date: 1980-01-01
        out.extend(0xdead_beefu32.to_le_bytes()); // crc-32
        out.extend(deflated_len.to_le_bytes());
        out.extend(declared.to_le_bytes());
        out.extend(name_len.to_le_bytes());
        out.extend(0u16.to_le_bytes()); // extra field length
    };
    let mut zip = b"PK\x03\x04".to_vec();
    common(&mut zip);
    zip.extend(name.as_bytes());
    zip.extend(deflated);
    let central = zip.len();
    zip.extend(b"PK\x01\x02");
    zip.extend(0x0314u16.to_le_bytes()); // made by: Unix, 2.0
    common(&mut zip);
    zip.extend(0u16.to_le_bytes()); // comment length
    zip.extend(0u16.to_le_bytes()); // disk
    zip.extend(0u16.to_le_bytes()); // internal attributes
    zip.extend((0o100_644u32 << 16).to_le_bytes());
    zip.extend(0u32.to_le_bytes()); // local header offset
    zip.extend(name.as_bytes());
    let central_len = zip.len() - central;
    zip.extend(b"PK\x05\x06");
    zip.extend([0; 4]); // disks
    zip.extend(1u16.to_le_bytes());
    zip.extend(1u16.to_le_bytes());
    zip.extend(u32::try_from(central_len).unwrap().to_le_bytes());
    zip.extend(u32::try_from(central).unwrap().to_le_bytes());
    zip.extend(0u16.to_le_bytes()); // comment length
    zip
}

/// `mib` MiB of zeros as raw deflate, made cheaply: one MiB compressed with a full
/// flush (which ends byte-aligned and refers to nothing before it), repeated.
fn deflated_zeros(mib: usize) -> Vec<u8> {
    let mut compress = flate2::Compress::new(flate2::Compression::default(), false);
    let mut chunk = Vec::with_capacity(1 << 20);
    compress
        .compress_vec(&[0; 1 << 20], &mut chunk, flate2::FlushCompress::Full)
        .unwrap();
    assert_eq!(compress.total_in(), 1 << 20);
    let mut end = Vec::with_capacity(64);
    compress
        .compress_vec(&[], &mut end, flate2::FlushCompress::Finish)
        .unwrap();
    let mut stream = chunk.repeat(mib);
    stream.extend(end);
    stream
}

/// A tar.gz of `header`, then `mib` MiB of zeros as its data, then the tar `rest`:
/// made cheaply of gzip members (which a gzip reader reads as one stream), the zeros
/// one MiB compressed once and repeated.
fn tar_gz_with_zeros(header: &Header, mib: usize, rest: &[u8]) -> Vec<u8> {
    let mut stream = gzip(header.as_bytes());
    stream.extend(gzip(&[0; 1 << 20]).repeat(mib));
    stream.extend(gzip(rest));
    stream
}

/// Sets the Unix mode (type bits included) of the zip entry called `name`, in the
/// central directory, where readers take it from.
fn set_zip_mode(bytes: &mut [u8], name: &str, mode: u32) {
    let mut at = 0;
    while let Some(found) = bytes[at..].windows(4).position(|w| w == b"PK\x01\x02") {
        let header = at + found;
        let name_len = u16::from_le_bytes([bytes[header + 28], bytes[header + 29]]) as usize;
        if &bytes[header + 46..header + 46 + name_len] == name.as_bytes() {
            bytes[header + 5] = 3; // made by Unix
            bytes[header + 38..header + 42].copy_from_slice(&(mode << 16).to_le_bytes());
            return;
        }
        at = header + 4;
    }
    panic!("no entry {name} in the zip");
}

fn tar_item(item: &Item) -> (Header, Vec<u8>) {
    match item {
        Item::File(name, data, mode) => (
            tar_header(EntryType::Regular, name, "", data.len() as u64, *mode),
            data.clone(),
        ),
        Item::Dir(name) => (
            tar_header(EntryType::Directory, name, "", 0, 0o755),
            Vec::new(),
        ),
        Item::Symlink(name, target) => (
            tar_header(EntryType::Symlink, name, target, 0, 0o777),
            Vec::new(),
        ),
    }
}

fn archive_of(format: Archive, items: &[Item]) -> Vec<u8> {
    let tar = || {
        let entries: Vec<(Header, Vec<u8>)> = items.iter().map(tar_item).collect();
        let entries: Vec<(Header, &[u8])> =
            entries.iter().map(|(h, d)| (h.clone(), &d[..])).collect();
        tar_of(&entries)
    };
    match format {
        Archive::Tar => tar(),
        Archive::TarGz => gzip(&tar()),
        Archive::Zip => zip_of(items),
    }
}

/// A temp dir holding an archive and the destination `out` (missing until unpacked).
struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn dest(&self) -> PathBuf {
        self.path().join("out")
    }

    fn archive(&self, format: Archive, bytes: &[u8]) -> PathBuf {
        let path = self.path().join(format!("archive.{format}"));
        fs::write(&path, bytes).unwrap();
        path
    }

    fn unpack(
        &self,
        format: Archive,
        bytes: &[u8],
        limits: &Limits,
    ) -> Result<Unpacked, UnpackError> {
        unpack(&self.archive(format, bytes), format, &self.dest(), limits)
    }

    fn unpack_items(&self, format: Archive, items: &[Item]) -> Result<Unpacked, UnpackError> {
        self.unpack(format, &archive_of(format, items), &Limits::default())
    }

    /// Everything in the sandbox but the archive: after a failure, what was there
    /// before and nothing else.
    fn leftovers(&self) -> Vec<String> {
        listing(self.path())
            .into_iter()
            .filter(|path| !path.starts_with("archive."))
            .collect()
    }
}

/// Every path below `dir`, sorted: directories end in `/`, symlinks show their target.
fn listing(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let shown = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_symlink() {
                out.push(format!(
                    "{shown} -> {}",
                    fs::read_link(&path).unwrap().display()
                ));
            } else if meta.is_dir() {
                out.push(format!("{shown}/"));
                walk(root, &path, out);
            } else {
                out.push(shown);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[track_caller]
fn assert_escapes(result: Result<Unpacked, UnpackError>, name: &str, expected: &Escape) {
    match result {
        Err(UnpackError::EntryEscapes { entry, reason }) => {
            assert_eq!(entry, name);
            assert_eq!(&reason, expected, "entry {name}");
        }
        other => panic!("expected {name} to be refused for {expected:?}, got {other:?}"),
    }
}

#[test]
fn every_format_unpacks_files_dirs_and_symlinks() {
    for format in FORMATS {
        let sandbox = Sandbox::new();
        let items = [
            Item::Dir("bin/"),
            Item::File("bin/run", b"#!/bin/sh\n".to_vec(), 0o4777),
            Item::File("docs/guide/readme.txt", b"read me".to_vec(), 0o666),
            Item::File("docs/guide/private.txt", b"ours".to_vec(), 0o640),
            Item::Symlink("docs/guide/tool", "../../bin/run"),
            Item::Symlink("latest", "bin"),
        ];
        let unpacked = sandbox.unpack_items(format, &items).unwrap();

        let dest = sandbox.dest();
        assert_eq!(
            listing(&dest),
            [
                "bin/",
                "bin/run",
                "docs/",
                "docs/guide/",
                "docs/guide/private.txt",
                "docs/guide/readme.txt",
                "docs/guide/tool -> ../../bin/run",
                "latest -> bin",
            ],
            "{format}"
        );
        assert_eq!(
            unpacked,
            Unpacked {
                files: 3,
                dirs: 3,
                links: 2,
                bytes: 10 + 7 + 4
            },
            "{format}"
        );
        assert_eq!(
            fs::read(dest.join("docs/guide/tool")).unwrap(),
            b"#!/bin/sh\n"
        );
        assert_eq!(mode(&dest.join("bin/run")), 0o755, "{format}: no setuid");
        assert_eq!(
            mode(&dest.join("docs/guide/readme.txt")),
            0o644,
            "{format}: no group write"
        );
        assert_eq!(
            mode(&dest.join("docs/guide/private.txt")),
            0o640,
            "{format}"
        );
        for dir in ["bin", "docs", "docs/guide"] {
            assert_eq!(mode(&dest.join(dir)), 0o755, "{format}: {dir}");
        }
    }
}

#[test]
fn directories_are_0755_whatever_the_archive_says() {
    let sandbox = Sandbox::new();
    let archive = tar_of(&[
        (
            tar_header(EntryType::Directory, "locked/", "", 0, 0o500),
            b"",
        ),
        (
            tar_header(EntryType::Directory, "open/", "", 0, 0o1777),
            b"",
        ),
        (
            tar_header(EntryType::Regular, "locked/x", "", 1, 0o644),
            b"x",
        ),
    ]);
    sandbox
        .unpack(Archive::Tar, &archive, &Limits::default())
        .unwrap();
    assert_eq!(mode(&sandbox.dest().join("locked")), 0o755);
    assert_eq!(mode(&sandbox.dest().join("open")), 0o755);
}

#[test]
fn modification_times_are_kept() {
    let sandbox = Sandbox::new();
    sandbox
        .unpack_items(Archive::Tar, &[file("stamp", b"x")])
        .unwrap();
    let mtime = fs::metadata(sandbox.dest().join("stamp"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        mtime,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)
    );

    let sandbox = Sandbox::new();
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let time = zip::DateTime::from_date_and_time(2001, 9, 9, 1, 46, 40).unwrap();
    writer
        .start_file(
            "stamp",
            SimpleFileOptions::default().last_modified_time(time),
        )
        .unwrap();
    writer.write_all(b"x").unwrap();
    let bytes = writer.finish().unwrap().into_inner();
    sandbox
        .unpack(Archive::Zip, &bytes, &Limits::default())
        .unwrap();
    let mtime = fs::metadata(sandbox.dest().join("stamp"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        mtime,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)
    );
}

#[test]
fn hard_link_to_an_unpacked_file_shares_its_inode() {
    let sandbox = Sandbox::new();
    let archive = tar_of(&[
        (
            tar_header(EntryType::Regular, "lib/libx.so.1", "", 3, 0o755),
            b"elf",
        ),
        (
            tar_header(EntryType::Link, "lib/libx.so", "lib/libx.so.1", 0, 0o755),
            b"",
        ),
        (
            tar_header(EntryType::Link, "bin/x", "./lib/libx.so", 0, 0o755),
            b"",
        ),
    ]);
    let unpacked = sandbox
        .unpack(Archive::Tar, &archive, &Limits::default())
        .unwrap();
    assert_eq!((unpacked.files, unpacked.links), (1, 2));
    let inode = |path: &str| fs::metadata(sandbox.dest().join(path)).unwrap().ino();
    assert_eq!(inode("lib/libx.so"), inode("lib/libx.so.1"));
    assert_eq!(inode("bin/x"), inode("lib/libx.so.1"));
}

#[test]
fn hard_link_to_anything_but_an_unpacked_file_is_refused() {
    for target in [
        "/etc/passwd",
        "../outside",
        "later",
        "dir",
        "dir/",
        "missing",
    ] {
        let sandbox = Sandbox::new();
        fs::write(sandbox.path().join("outside"), b"secret").unwrap();
        let archive = tar_of(&[
            (tar_header(EntryType::Directory, "dir/", "", 0, 0o755), b""),
            (tar_header(EntryType::Link, "link", target, 0, 0o644), b""),
            (tar_header(EntryType::Regular, "later", "", 1, 0o644), b"x"),
        ]);
        let result = sandbox.unpack(Archive::Tar, &archive, &Limits::default());
        let expected = Escape::HardLinkTarget {
            target: target.to_owned(),
        };
        assert_escapes(result, "link", &expected);
        assert_eq!(sandbox.leftovers(), ["outside"], "{target}");
    }
}

#[test]
fn names_that_climb_out_or_are_absolute_are_refused() {
    let cases: [(&'static str, Escape); 9] = [
        ("../outside", Escape::ParentDir),
        ("a/../../outside", Escape::ParentDir),
        ("a/b/../c", Escape::ParentDir),
        ("..\\outside", Escape::ParentDir),
        ("/tmp/outside", Escape::Absolute),
        ("\\tmp\\outside", Escape::Absolute),
        ("C:\\outside", Escape::Absolute),
        ("\\\\srv\\outside", Escape::Absolute),
        ("c:outside", Escape::Absolute),
    ];
    for format in FORMATS {
        for (name, reason) in &cases {
            let sandbox = Sandbox::new();
            let result =
                sandbox.unpack_items(format, &[file("fine.txt", b"ok"), file(name, b"evil")]);
            assert_escapes(result, name, reason);
            assert_eq!(sandbox.leftovers(), Vec::<String>::new(), "{format} {name}");
        }
    }
}

#[test]
fn entry_through_a_symlink_from_the_archive_is_refused() {
    for format in FORMATS {
        // The classic: a symlink out, then a file through it. The symlink is refused first.
        let sandbox = Sandbox::new();
        let result = sandbox.unpack_items(
            format,
            &[
                Item::Symlink("etc", "/etc"),
                file("etc/passwd", b"root::0:0::/:/bin/sh"),
            ],
        );
        let expected = Escape::AbsoluteTarget {
            target: "/etc".to_owned(),
        };
        assert_escapes(result, "etc", &expected);

        // A symlink that leads inside is made, but nothing is written through it either.
        let sandbox = Sandbox::new();
        let result = sandbox.unpack_items(
            format,
            &[
                Item::Dir("real/"),
                Item::Symlink("alias", "real"),
                file("alias/x.txt", b"x"),
            ],
        );
        let expected = Escape::ThroughSymlink {
            link: PathBuf::from("alias"),
        };
        assert_escapes(result, "alias/x.txt", &expected);
        assert_eq!(sandbox.leftovers(), Vec::<String>::new(), "{format}");

        // Nor is a directory made through one.
        let sandbox = Sandbox::new();
        let result = sandbox.unpack_items(
            format,
            &[Item::Symlink("here", "."), Item::Dir("here/sub/")],
        );
        let expected = Escape::ThroughSymlink {
            link: PathBuf::from("here"),
        };
        assert_escapes(result, "here/sub/", &expected);
    }
}

#[test]
fn symlink_already_in_the_destination_is_not_followed() {
    let sandbox = Sandbox::new();
    let outside = sandbox.path().join("elsewhere");
    fs::create_dir(&outside).unwrap();
    fs::create_dir(sandbox.dest()).unwrap();
    std::os::unix::fs::symlink(&outside, sandbox.dest().join("cache")).unwrap();

    let result = sandbox.unpack_items(Archive::Tar, &[file("cache/file", b"x")]);
    let expected = Escape::ThroughSymlink {
        link: PathBuf::from("cache"),
    };
    assert_escapes(result, "cache/file", &expected);
    assert_eq!(
        sandbox.leftovers(),
        [
            "elsewhere/",
            "out/",
            &format!("out/cache -> {}", outside.display())
        ],
        "what was there before stays, and nothing was written through the link"
    );
}

#[test]
fn symlinks_that_lead_out_are_refused() {
    let target = |target: &str| target.to_owned();
    let cases = [
        (
            vec![Item::Symlink("abs", "/etc/passwd")],
            "abs",
            Escape::AbsoluteTarget {
                target: target("/etc/passwd"),
            },
        ),
        (
            vec![Item::Symlink("a/b/up", "../../../outside")],
            "a/b/up",
            Escape::TargetOutside {
                target: target("../../../outside"),
            },
        ),
        (
            vec![Item::Symlink("top", "..")],
            "top",
            Escape::TargetOutside {
                target: target(".."),
            },
        ),
        // `here -> .` is fine, but `here/../x` resolves from the destination's parent.
        (
            vec![
                Item::Symlink("here", "."),
                Item::Symlink("sneak", "here/../outside"),
            ],
            "sneak",
            Escape::TargetClimbsAfterName {
                target: target("here/../outside"),
            },
        ),
    ];
    for format in FORMATS {
        for (items, name, reason) in &cases {
            let sandbox = Sandbox::new();
            assert_escapes(sandbox.unpack_items(format, items), name, reason);
            assert_eq!(sandbox.leftovers(), Vec::<String>::new(), "{format} {name}");
        }
    }
}

#[test]
fn symlinks_may_climb_as_far_as_the_destination() {
    let sandbox = Sandbox::new();
    let items = [
        Item::Symlink("a/b/root", "../.."),
        Item::Symlink("a/b/sibling", "../c/./file"),
        Item::Symlink("dot", "./a"),
    ];
    let unpacked = sandbox.unpack_items(Archive::Tar, &items).unwrap();
    assert_eq!(unpacked.links, 3);
}

#[test]
fn an_existing_file_is_never_overwritten() {
    for format in FORMATS {
        let sandbox = Sandbox::new();
        fs::create_dir(sandbox.dest()).unwrap();
        fs::write(sandbox.dest().join("notes.txt"), b"mine").unwrap();

        let result = sandbox.unpack_items(
            format,
            &[file("new.txt", b"new"), file("notes.txt", b"theirs")],
        );
        match result {
            Err(UnpackError::Exists { entry, path }) => {
                assert_eq!(entry, "notes.txt");
                assert_eq!(path, sandbox.dest().join("notes.txt"));
            }
            other => panic!("{format}: expected Exists, got {other:?}"),
        }
        assert_eq!(sandbox.leftovers(), ["out/", "out/notes.txt"], "{format}");
        assert_eq!(fs::read(sandbox.dest().join("notes.txt")).unwrap(), b"mine");
    }
}

#[test]
fn an_entry_is_not_written_twice() {
    let cases: [(&[Item], &str); 4] = [
        (&[file("twice", b"1"), file("twice", b"2")], "twice"),
        (&[file("name", b"1"), Item::Dir("name/")], "name/"),
        (
            &[file("name", b"1"), file("name/below", b"2")],
            "name/below",
        ),
        (&[Item::Symlink("link", "a"), file("link", b"2")], "link"),
    ];
    for (items, refused) in cases {
        let sandbox = Sandbox::new();
        match sandbox.unpack_items(Archive::Tar, items) {
            Err(UnpackError::Exists { entry, .. }) => assert_eq!(entry, refused),
            other => panic!("expected {refused} to be refused, got {other:?}"),
        }
        assert_eq!(sandbox.leftovers(), Vec::<String>::new());
    }
}

#[test]
fn directories_already_there_are_entered() {
    let sandbox = Sandbox::new();
    fs::create_dir_all(sandbox.dest().join("logs")).unwrap();
    let unpacked = sandbox
        .unpack_items(
            Archive::Tar,
            &[Item::Dir("logs/"), file("logs/today.txt", b"ok")],
        )
        .unwrap();
    assert_eq!((unpacked.files, unpacked.dirs), (1, 0));
    assert_eq!(listing(&sandbox.dest()), ["logs/", "logs/today.txt"]);
}

#[test]
fn failure_removes_the_destination_and_the_parents_it_created() {
    let sandbox = Sandbox::new();
    let dest = sandbox.path().join("runs/42/out");
    let archive = sandbox.archive(
        Archive::Tar,
        &archive_of(
            Archive::Tar,
            &[
                file("a/b/c.txt", b"c"),
                Item::Dir("d/"),
                file("../evil", b"x"),
            ],
        ),
    );
    let result = unpack(&archive, Archive::Tar, &dest, &Limits::default());
    assert_escapes(result, "../evil", &Escape::ParentDir);
    assert_eq!(sandbox.leftovers(), Vec::<String>::new());
}

#[test]
fn failure_keeps_a_destination_that_was_there() {
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.dest()).unwrap();
    let result = sandbox.unpack_items(Archive::Zip, &[file("a/b/c.txt", b"c"), file("/abs", b"x")]);
    assert_escapes(result, "/abs", &Escape::Absolute);
    assert_eq!(sandbox.leftovers(), ["out/"]);
}

#[test]
fn missing_archive_creates_nothing() {
    let sandbox = Sandbox::new();
    let missing = sandbox.path().join("nope.tar");
    match unpack(&missing, Archive::Tar, &sandbox.dest(), &Limits::default()) {
        Err(UnpackError::Io { path, action, .. }) => {
            assert_eq!(path, missing);
            assert_eq!(action, "open the archive");
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert_eq!(sandbox.leftovers(), Vec::<String>::new());
}

#[test]
fn gzip_bomb_stops_at_the_byte_limit() {
    let sandbox = Sandbox::new();
    let header = tar_header(EntryType::Regular, "zeros", "", 64 << 20, 0o644);
    let bomb = tar_gz_with_zeros(&header, 64, &tar_of(&[]));
    assert!(bomb.len() < 1 << 20, "the bomb is {} bytes", bomb.len());
    let limits = Limits {
        max_total_bytes: 1 << 20,
        ..Limits::default()
    };
    let result = sandbox.unpack(Archive::TarGz, &bomb, &limits);
    assert!(
        matches!(result, Err(UnpackError::TooLarge { limit }) if limit == 1 << 20),
        "{result:?}"
    );
    assert_eq!(sandbox.leftovers(), Vec::<String>::new());
}

#[test]
fn zip_bomb_stops_at_the_byte_limit() {
    let sandbox = Sandbox::new();
    let bomb = raw_zip("zeros", &deflated_zeros(64), 64 << 20);
    assert!(bomb.len() < 1 << 20, "the bomb is {} bytes", bomb.len());
    let limits = Limits {
        max_total_bytes: 1 << 20,
        ..Limits::default()
    };
    let result = sandbox.unpack(Archive::Zip, &bomb, &limits);
    assert!(
        matches!(result, Err(UnpackError::TooLarge { limit }) if limit == 1 << 20),
        "{result:?}"
    );
    assert_eq!(sandbox.leftovers(), Vec::<String>::new());
}

#[test]
fn byte_limit_counts_what_is_written_across_files() {
    for format in FORMATS {
        let items = [file("a", &[1; 600]), file("b", &[2; 400])];
        let exact = Limits {
            max_total_bytes: 1000,
            ..Limits::default()
        };
        let sandbox = Sandbox::new();
        assert_eq!(
            sandbox
                .unpack(format, &archive_of(format, &items), &exact)
                .unwrap()
                .bytes,
            1000
        );

        let short = Limits {
            max_total_bytes: 999,
            ..Limits::default()
        };
        let sandbox = Sandbox::new();
        let result = sandbox.unpack(format, &archive_of(format, &items), &short);
        assert!(
            matches!(result, Err(UnpackError::TooLarge { limit: 999 })),
            "{format}: {result:?}"
        );
        assert_eq!(sandbox.leftovers(), Vec::<String>::new(), "{format}");
    }
}

#[test]
fn zip_sizes_in_headers_are_not_trusted() {
    // The headers say 16 bytes; the deflated data is 64 MiB of zeros.
    let liar = raw_zip("liar", &deflated_zeros(64), 16);
    let sandbox = Sandbox::new();
    let limits = Limits {
        max_total_bytes: 1 << 20,
        ..Limits::default()
    };
    match sandbox.unpack(Archive::Zip, &liar, &limits) {
        // The zip reader notices the data running past the declared size; were it to read
        // on, the limit would stop it. Either way no more than the limit reaches the disk.
        Err(UnpackError::Corrupt { source, .. }) => {
            assert!(source.to_string().contains("declared"), "{source}");
        }
        Err(UnpackError::TooLarge { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(sandbox.leftovers(), Vec::<String>::new());
}

#[test]
fn data_hidden_outside_files_is_stopped() {
    // A directory entry with a body, and a GNU long name the tar reader would read
    // into memory: neither is a file, so neither counts as bytes written.
    let hiding = [
        tar_header(EntryType::Directory, "dir/", "", 64 << 20, 0o755),
        tar_header(EntryType::GNULongName, "././@LongLink", "", 64 << 20, 0o644),
    ];
    for header in hiding {
        let sandbox = Sandbox::new();
        let rest = tar_of(&[(tar_header(EntryType::Regular, "x", "", 1, 0o644), b"x")]);
        let result = sandbox.unpack(
            Archive::TarGz,
            &tar_gz_with_zeros(&header, 64, &rest),
            &Limits::default(),
        );
        assert!(
            matches!(result, Err(UnpackError::TooLarge { .. })),
            "{result:?}"
        );
        assert_eq!(sandbox.leftovers(), Vec::<String>::new());
    }
}

#[test]
fn entries_past_the_limit_are_refused() {
    let items = [
        Item::Dir("d/"),
        file("d/a", b"a"),
        file("d/b", b"b"),
        Item::Symlink("c", "d/a"),
    ];
    let limits = |max_entries| Limits {
        max_entries,
        ..Limits::default()
    };
    for format in FORMATS {
        let sandbox = Sandbox::new();
        let archive = archive_of(format, &items);
        assert!(
            sandbox.unpack(format, &archive, &limits(4)).is_ok(),
            "{format}"
        );

        let sandbox = Sandbox::new();
        let result = sandbox.unpack(format, &archive, &limits(3));
        assert!(
            matches!(result, Err(UnpackError::TooManyEntries { limit: 3 })),
            "{format}: {result:?}"
        );
        assert_eq!(sandbox.leftovers(), Vec::<String>::new(), "{format}");
    }
}

#[test]
fn devices_fifos_and_sockets_are_unsupported() {
    let tar_cases = [
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
        (EntryType::Fifo, "fifo"),
    ];
    for (kind, shown) in tar_cases {
        let sandbox = Sandbox::new();
        let archive = tar_of(&[
            (tar_header(EntryType::Regular, "ok", "", 1, 0o644), b"x"),
            (tar_header(kind, "dev/thing", "", 0, 0o644), b""),
        ]);
        match sandbox.unpack(Archive::Tar, &archive, &Limits::default()) {
            Err(UnpackError::UnsupportedEntry { entry, kind }) => {
                assert_eq!((entry.as_str(), kind), ("dev/thing", shown));
            }
            other => panic!("expected {shown} to be unsupported, got {other:?}"),
        }
        assert_eq!(sandbox.leftovers(), Vec::<String>::new());
    }

    let zip_cases = [
        (0o020_644, "character device"),
        (0o060_644, "block device"),
        (0o010_644, "fifo"),
        (0o140_644, "socket"),
    ];
    for (mode, shown) in zip_cases {
        let sandbox = Sandbox::new();
        let mut archive = zip_of(&[file("ok", b"x"), file("dev/thing", b"")]);
        set_zip_mode(&mut archive, "dev/thing", mode);
        match sandbox.unpack(Archive::Zip, &archive, &Limits::default()) {
            Err(UnpackError::UnsupportedEntry { entry, kind }) => {
                assert_eq!((entry.as_str(), kind), ("dev/thing", shown));
            }
            other => panic!("expected {shown} to be unsupported, got {other:?}"),
        }
        assert_eq!(sandbox.leftovers(), Vec::<String>::new());
    }
}

#[test]
fn zip_entries_are_symlinks_by_their_mode() {
    let sandbox = Sandbox::new();
    let mut archive = zip_of(&[file("target", b"x"), file("link", b"target")]);
    set_zip_mode(&mut archive, "link", 0o120_777);
    let unpacked = sandbox
        .unpack(Archive::Zip, &archive, &Limits::default())
        .unwrap();
    assert_eq!((unpacked.files, unpacked.links), (1, 1));
    assert_eq!(listing(&sandbox.dest()), ["link -> target", "target"]);
}

#[test]
fn gnu_and_pax_long_names_unpack() {
    let deep = format!("{}/{}", "d".repeat(120), "f".repeat(120));
    let far = format!("{}/{}", "p".repeat(120), "q".repeat(120));
    let mut builder = tar::Builder::new(Vec::new());

    // GNU: the tar writer adds a long name entry by itself.
    let mut header = Header::new_gnu();
    header.set_size(4);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, &deep, &b"deep"[..])
        .unwrap();
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    builder.append_link(&mut header, "shortcut", &deep).unwrap();

    // PAX: a path record in an extended header before a ustar header with a short name.
    builder
        .append_pax_extensions([("path", far.as_bytes())])
        .unwrap();
    let mut header = Header::new_ustar();
    header.set_path("placeholder").unwrap();
    header.set_size(3);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append(&header, &b"far"[..]).unwrap();
    let archive = builder.into_inner().unwrap();

    let sandbox = Sandbox::new();
    let unpacked = sandbox
        .unpack(Archive::Tar, &archive, &Limits::default())
        .unwrap();
    assert_eq!((unpacked.files, unpacked.links), (2, 1));
    let dest = sandbox.dest();
    assert_eq!(fs::read(dest.join(&deep)).unwrap(), b"deep");
    assert_eq!(fs::read(dest.join("shortcut")).unwrap(), b"deep");
    assert_eq!(fs::read(dest.join(&far)).unwrap(), b"far");
    assert!(!dest.join("placeholder").exists());
}

#[test]
fn empty_archives_unpack_to_an_empty_directory() {
    for format in FORMATS {
        let sandbox = Sandbox::new();
        let unpacked = sandbox.unpack_items(format, &[]).unwrap();
        assert_eq!(unpacked, Unpacked::default(), "{format}");
        assert_eq!(sandbox.leftovers(), ["out/"], "{format}");
    }
}

#[test]
fn dot_entries_name_the_destination() {
    let sandbox = Sandbox::new();
    let unpacked = sandbox
        .unpack_items(
            Archive::Tar,
            &[Item::Dir("./"), Item::Dir("./a/"), file("./a/./b", b"b")],
        )
        .unwrap();
    assert_eq!((unpacked.files, unpacked.dirs), (1, 1));
    assert_eq!(listing(&sandbox.dest()), ["a/", "a/b"]);

    let sandbox = Sandbox::new();
    assert_escapes(
        sandbox.unpack_items(Archive::Tar, &[file("./", b"x")]),
        "./",
        &Escape::Root,
    );
}

#[test]
fn unreadable_archives_are_corrupt() {
    let garbage = b"this is not an archive, whatever its name says".repeat(20);
    for format in FORMATS {
        let sandbox = Sandbox::new();
        match sandbox.unpack(format, &garbage, &Limits::default()) {
            Err(UnpackError::Corrupt {
                archive,
                format: read_as,
                ..
            }) => {
                assert_eq!(archive, sandbox.path().join(format!("archive.{format}")));
                assert_eq!(read_as, format);
            }
            other => panic!("{format}: expected Corrupt, got {other:?}"),
        }
        assert_eq!(sandbox.leftovers(), Vec::<String>::new(), "{format}");
    }

    // Cut short in the middle of a file's data.
    let sandbox = Sandbox::new();
    let whole = gzip(&archive_of(Archive::Tar, &[file("a", &[7; 100_000])]));
    let result = sandbox.unpack(
        Archive::TarGz,
        &whole[..whole.len() / 2],
        &Limits::default(),
    );
    assert!(
        matches!(result, Err(UnpackError::Corrupt { .. })),
        "{result:?}"
    );
    assert_eq!(sandbox.leftovers(), Vec::<String>::new());
}

#[test]
fn formats_are_named_by_extension_string_and_serde() {
    assert_eq!(Archive::from_name("a.tar"), Some(Archive::Tar));
    assert_eq!(Archive::from_name("dir/a.tar.gz"), Some(Archive::TarGz));
    assert_eq!(Archive::from_name("A.TGZ"), Some(Archive::TarGz));
    assert_eq!(Archive::from_name("a.zip"), Some(Archive::Zip));
    assert_eq!(Archive::from_name("a.gz"), None);
    assert_eq!(Archive::from_name("tar"), None);

    for format in FORMATS {
        assert_eq!(format.to_string().parse::<Archive>(), Ok(format));
        let json = serde_json::to_string(&format).unwrap();
        assert_eq!(json, format!("\"{format}\""));
        assert_eq!(serde_json::from_str::<Archive>(&json).unwrap(), format);
    }
    assert_eq!("tgz".parse::<Archive>(), Ok(Archive::TarGz));
    assert_eq!(
        serde_json::from_str::<Archive>("\"tgz\"").unwrap(),
        Archive::TarGz
    );

    let error = "rar".parse::<Archive>().unwrap_err().to_string();
    assert!(error.contains("\"rar\""), "{error}");
    for accepted in ["\"tar\"", "\"tar.gz\"", "\"tgz\"", "\"zip\""] {
        assert!(error.contains(accepted), "{error}");
    }
}

#[test]
fn errors_name_the_entry_and_the_fix() {
    let escape = UnpackError::EntryEscapes {
        entry: "../x".to_owned(),
        reason: Escape::ParentDir,
    };
    assert_eq!(
        escape.to_string(),
        "refused archive entry \"../x\": its name has a `..` component"
    );
    let exists = UnpackError::Exists {
        entry: "a".to_owned(),
        path: PathBuf::from("/run/a"),
    };
    assert!(
        exists.to_string().contains("empty or missing directory"),
        "{exists}"
    );
}
