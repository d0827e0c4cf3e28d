//! The pieces of a bbolt database file: page headers, meta pages, leaf and
//! branch pages, written and read back without trusting the bytes.
//!
//! Every page starts with a 16-byte header: page id (u64), flags (u16),
//! element count (u16) and the number of overflow pages that follow it
//! (u32), all little-endian. A meta page holds, after its header: magic,
//! format version, page size, flags (u32 each), the root bucket (root page
//! id and sequence, u64 each), the freelist page id, the high-water page id
//! (the number of pages in use), the transaction id, and an FNV-1a-64 of the
//! 56 bytes before it. A leaf page holds `count` 16-byte elements (flags,
//! offset, key length, value length; the offset counts from the element
//! itself) followed by the keys and values; a branch page holds 16-byte
//! elements (offset, key length, child page id) followed by the keys, each
//! the first key under that child. A leaf element flagged as a bucket has a
//! value of the bucket's root page id and sequence; a root of 0 means the
//! bucket is inline: its whole leaf page follows in the value.

/// The page size a snapshot is written with.
pub const PAGE_SIZE: usize = 4096;
/// bbolt's magic number.
pub const MAGIC: u32 = 0xED0C_DAED;
/// bbolt's file format version.
pub const VERSION: u32 = 2;
/// Size of a page header and of a page element.
pub const HEADER: usize = 16;
/// Size of a leaf or branch page element.
pub const ELEM: usize = 16;
/// Size of a bucket's header in its leaf value.
pub const BUCKET_HEADER: usize = 16;

/// Page flag: a branch page.
pub const BRANCH: u16 = 0x01;
/// Page flag: a leaf page.
pub const LEAF: u16 = 0x02;
/// Page flag: a meta page.
pub const META: u16 = 0x04;
/// Page flag: the freelist.
pub const FREELIST: u16 = 0x10;
/// Leaf element flag: the value is a bucket.
pub const BUCKET_LEAF: u32 = 0x01;

/// Bytes of the meta fields the checksum covers.
const META_SUMMED: usize = 56;

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Appends a page header.
pub fn header(out: &mut Vec<u8>, id: u64, flags: u16, count: u16, overflow: u32) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&overflow.to_le_bytes());
}

/// How many pages `bytes` of page content take.
pub fn pages_for(bytes: usize) -> usize {
    bytes.div_ceil(PAGE_SIZE).max(1)
}

/// What a meta page says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// The page size.
    pub page_size: u32,
    /// The root bucket's page.
    pub root: u64,
    /// The freelist's page.
    pub freelist: u64,
    /// The number of pages in use.
    pub pages: u64,
    /// The transaction that wrote it.
    pub txid: u64,
}

impl Meta {
    /// The meta page `id` (0 or 1), a whole page.
    pub fn page(&self, id: u64) -> Vec<u8> {
        let mut p = Vec::with_capacity(PAGE_SIZE);
        header(&mut p, id, META, 0, 0);
        for v in [MAGIC, VERSION, self.page_size, 0] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.root, 0, self.freelist, self.pages, self.txid] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        let sum = fnv1a64(&p[HEADER..HEADER + META_SUMMED]);
        p.extend_from_slice(&sum.to_le_bytes());
        p.resize(PAGE_SIZE, 0);
        p
    }

    /// Reads the meta page `id` from the start of `page`, if it is one.
    pub fn read(page: &[u8], id: u64) -> Result<Meta, String> {
        let m = page
            .get(HEADER..HEADER + META_SUMMED + 8)
            .ok_or("meta page cut short")?;
        let (pid, flags, _, _) = read_header(page).ok_or("meta page cut short")?;
        if pid != id || flags != META {
            return Err(format!("page {id} is not a meta page"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(m[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(m[o..o + 8].try_into().expect("8 bytes"));
        if u32_at(0) != MAGIC {
            return Err(format!("meta page {id}: not a bbolt file (bad magic)"));
        }
        if u32_at(4) != VERSION {
            return Err(format!("meta page {id}: bbolt version {}", u32_at(4)));
        }
        if u64_at(META_SUMMED) != fnv1a64(&m[..META_SUMMED]) {
            return Err(format!("meta page {id}: checksum mismatch"));
        }
        Ok(Meta {
            page_size: u32_at(8),
            root: u64_at(16),
            freelist: u64_at(32),
            pages: u64_at(40),
            txid: u64_at(48),
        })
    }
}

/// A page header's id, flags, count and overflow.
pub fn read_header(page: &[u8]) -> Option<(u64, u16, u16, u32)> {
    let h = page.get(..HEADER)?;
    Some((
        u64::from_le_bytes(h[0..8].try_into().ok()?),
        u16::from_le_bytes(h[8..10].try_into().ok()?),
        u16::from_le_bytes(h[10..12].try_into().ok()?),
        u32::from_le_bytes(h[12..16].try_into().ok()?),
    ))
}

/// Size of a leaf page holding `count` elements of `bytes` keys and values.
pub fn leaf_size(count: usize, bytes: usize) -> usize {
    HEADER + count * ELEM + bytes
}

/// Builds one leaf (or branch) page: header, elements, then data.
pub struct PageBuilder {
    buf: Vec<u8>,
    count: usize,
    filled: usize,
    branch: bool,
}

impl PageBuilder {
    /// A leaf page of `count` elements with `id`, into `buf` (cleared).
    pub fn leaf(buf: Vec<u8>, id: u64, count: usize) -> Self {
        Self::new(buf, id, count, LEAF)
    }

    /// A branch page of `count` children with `id`, into `buf` (cleared).
    pub fn branch(buf: Vec<u8>, id: u64, count: usize) -> Self {
        Self::new(buf, id, count, BRANCH)
    }

    fn new(mut buf: Vec<u8>, id: u64, count: usize, flags: u16) -> Self {
        buf.clear();
        header(&mut buf, id, flags, count as u16, 0);
        buf.resize(HEADER + count * ELEM, 0);
        PageBuilder {
            buf,
            count,
            filled: 0,
            branch: flags == BRANCH,
        }
    }

    /// Elements added so far.
    pub fn len(&self) -> usize {
        self.filled
    }

    /// Adds a leaf element; false when the page already holds `count`.
    pub fn push_leaf(&mut self, flags: u32, key: &[u8], value: &[u8]) -> bool {
        if self.branch || self.filled == self.count {
            return false;
        }
        let at = HEADER + self.filled * ELEM;
        let pos = (self.buf.len() - at) as u32;
        let e = &mut self.buf[at..at + ELEM];
        e[0..4].copy_from_slice(&flags.to_le_bytes());
        e[4..8].copy_from_slice(&pos.to_le_bytes());
        e[8..12].copy_from_slice(&(key.len() as u32).to_le_bytes());
        e[12..16].copy_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(value);
        self.filled += 1;
        true
    }

    /// Adds a branch element; false when the page already holds `count`.
    pub fn push_branch(&mut self, key: &[u8], child: u64) -> bool {
        if !self.branch || self.filled == self.count {
            return false;
        }
        let at = HEADER + self.filled * ELEM;
        let pos = (self.buf.len() - at) as u32;
        let e = &mut self.buf[at..at + ELEM];
        e[0..4].copy_from_slice(&pos.to_le_bytes());
        e[4..8].copy_from_slice(&(key.len() as u32).to_le_bytes());
        e[8..16].copy_from_slice(&child.to_le_bytes());
        self.buf.extend_from_slice(key);
        self.filled += 1;
        true
    }

    /// The page, padded to whole pages with its overflow count set.
    pub fn finish(mut self) -> Vec<u8> {
        let pages = pages_for(self.buf.len());
        self.buf[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
        self.buf.resize(pages * PAGE_SIZE, 0);
        self.buf
    }
}

/// An element of a leaf page, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct LeafElem<'a> {
    /// Element flags ([`BUCKET_LEAF`] or 0).
    pub flags: u32,
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
}

/// The `i`th element of the page `p` (header included), checked to lie
/// within it.
fn elem(p: &[u8], i: usize) -> Option<[u32; 4]> {
    let at = HEADER.checked_add(i.checked_mul(ELEM)?)?;
    let e = p.get(at..at + ELEM)?;
    let w = |o: usize| u32::from_le_bytes(e[o..o + 4].try_into().expect("4 bytes"));
    Some([w(0), w(4), w(8), w(12)])
}

/// The bytes `len` long at `pos` past the element at index `i`.
fn data(p: &[u8], i: usize, pos: u32, len: u64) -> Option<&[u8]> {
    let start = (HEADER + i * ELEM) as u64 + pos as u64;
    let end = start.checked_add(len)?;
    p.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
}

/// The elements of the leaf page `p`, or why they cannot be read.
pub fn leaf_elems(p: &[u8]) -> Result<Vec<LeafElem<'_>>, String> {
    let (_, flags, count, _) = read_header(p).ok_or("page cut short")?;
    if flags != LEAF {
        return Err(format!("expected a leaf page, flags {flags:#x}"));
    }
    (0..count as usize)
        .map(|i| {
            let [flags, pos, ksize, vsize] = elem(p, i).ok_or("leaf element out of its page")?;
            let kv = data(p, i, pos, ksize as u64 + vsize as u64)
                .ok_or("leaf key or value out of its page")?;
            let (key, value) = kv.split_at(ksize as usize);
            Ok(LeafElem { flags, key, value })
        })
        .collect()
}

/// The (first key, child page) elements of the branch page `p`.
pub fn branch_elems(p: &[u8]) -> Result<Vec<(&[u8], u64)>, String> {
    let (_, flags, count, _) = read_header(p).ok_or("page cut short")?;
    if flags != BRANCH {
        return Err(format!("expected a branch page, flags {flags:#x}"));
    }
    if count == 0 {
        return Err("an empty branch page".into());
    }
    (0..count as usize)
        .map(|i| {
            let [pos, ksize, lo, hi] = elem(p, i).ok_or("branch element out of its page")?;
            let key = data(p, i, pos, ksize as u64).ok_or("branch key out of its page")?;
            Ok((key, (hi as u64) << 32 | lo as u64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_meta_page_reads_back_and_a_changed_one_does_not() {
        let m = Meta {
            page_size: 4096,
            root: 3,
            freelist: 2,
            pages: 9,
            txid: 7,
        };
        let p = m.page(1);
        assert_eq!(p.len(), PAGE_SIZE);
        assert_eq!(Meta::read(&p, 1), Ok(m));
        assert!(Meta::read(&p, 0).is_err());
        let mut bad = p.clone();
        bad[HEADER + 20] ^= 1;
        assert!(Meta::read(&bad, 1).is_err());
    }

    #[test]
    fn leaf_and_branch_pages_read_back() {
        let mut b = PageBuilder::leaf(Vec::new(), 5, 2);
        assert!(b.push_leaf(0, b"a", b"1"));
        assert!(b.push_leaf(BUCKET_LEAF, b"bb", &[7; 5000]));
        assert!(!b.push_leaf(0, b"c", b""));
        let p = b.finish();
        assert_eq!(p.len(), 2 * PAGE_SIZE);
        assert_eq!(read_header(&p), Some((5, LEAF, 2, 1)));
        let e = leaf_elems(&p).unwrap();
        assert_eq!(
            (e[0].key, e[0].value, e[0].flags),
            (&b"a"[..], &b"1"[..], 0)
        );
        assert_eq!((e[1].key, e[1].value.len()), (&b"bb"[..], 5000));
        let mut b = PageBuilder::branch(Vec::new(), 6, 2);
        b.push_branch(b"a", 5);
        b.push_branch(b"q", 1 << 40);
        let p = b.finish();
        assert_eq!(
            branch_elems(&p).unwrap(),
            vec![(&b"a"[..], 5), (&b"q"[..], 1 << 40)]
        );
        assert!(leaf_elems(&p).is_err());
    }
}
