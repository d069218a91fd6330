use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prost::Message;
use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, MergeOperands, Options, WriteBatch,
    WriteOptions, DB,
};
use strata_chunk::{ChunkDecoder, StoredChunkHeader};
use strata_types::ChunkId;

use crate::pins::PinTable;
use crate::schema::ChunkMeta;
use crate::stats::ChunkTotals;
use crate::{schema, StoreError};

/// Whether the store may be changed through this handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Exclusive: one process at a time holds the store read-write.
    ReadWrite,
    /// A consistent view as of opening, beside a writer in another process.
    ReadOnly,
}

/// A node's chunk store. `Store` is `Sync`: share it between threads.
pub struct Store {
    pub(crate) db: DB,
    pub(crate) path: PathBuf,
    pub(crate) mode: OpenMode,
    pub(crate) pins: PinTable,
    /// Held while records that reference layers are checked and written:
    /// by commits, by `rm` and by GC's layer sweep.
    pub(crate) records_lock: Mutex<()>,
    /// Serializes "is this chunk new? then write it" per chunk stripe, so
    /// totals count every chunk once.
    chunk_stripes: [Mutex<()>; 64],
}

/// Whether the store in `dir` exists with every column family of the schema.
fn has_every_family(dir: &Path) -> bool {
    match DB::list_cf(&Options::default(), dir) {
        Ok(families) => schema::ALL.iter().all(|name| families.iter().any(|f| f == name)),
        Err(_) => false,
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path, mode: OpenMode) -> Result<Self, StoreError> {
        if mode == OpenMode::ReadOnly && !has_every_family(dir) {
            // Nothing to read yet, or a store made before a family existed:
            // create what is missing, then view it.
            drop(Self::open(dir, OpenMode::ReadWrite)?);
        }
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(std::thread::available_parallelism().map_or(2, |n| n.get()) as i32);
        opts.set_keep_log_file_num(4);
        opts.set_max_total_wal_size(256 << 20);
        // Chunk writes skip the WAL; flushing all families atomically keeps
        // a chunk and its meta entry together across a crash.
        opts.set_atomic_flush(true);
        // Chunks of a file lie one after another in a blob file: let the
        // kernel read ahead on them (RocksDB's default disables readahead).
        opts.set_advise_random_on_open(false);
        let cfs = schema::ALL.iter().map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name)));
        let db = match mode {
            OpenMode::ReadWrite => DB::open_cf_descriptors(&opts, dir, cfs),
            OpenMode::ReadOnly => DB::open_cf_descriptors_read_only(&opts, dir, cfs, false),
        }
        .map_err(|source| {
            let msg = source.to_string();
            if msg.contains("LOCK") && (msg.contains("unavailable") || msg.contains("lock hold")) {
                StoreError::Busy { path: dir.to_owned() }
            } else {
                StoreError::Open { path: dir.to_owned(), source }
            }
        })?;
        Ok(Self {
            db,
            path: dir.to_owned(),
            mode,
            pins: PinTable::default(),
            records_lock: Mutex::new(()),
            chunk_stripes: std::array::from_fn(|_| Mutex::new(())),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        // Every family in `schema::ALL` is created at open.
        #[allow(clippy::expect_used)]
        self.db.cf_handle(name).expect("column family created at open")
    }

    pub(crate) fn writable(&self) -> Result<(), StoreError> {
        match self.mode {
            OpenMode::ReadWrite => Ok(()),
            OpenMode::ReadOnly => Err(StoreError::ReadOnly),
        }
    }

    pub(crate) fn lock_records(&self) -> std::sync::MutexGuard<'_, ()> {
        self.records_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock_chunk(&self, id: &ChunkId) -> std::sync::MutexGuard<'_, ()> {
        let stripe = id.as_bytes()[0] as usize % self.chunk_stripes.len();
        self.chunk_stripes[stripe].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chunk's bytes, decoded and verified against `id`.
    pub fn get_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        let stored = self
            .db
            .get_pinned_cf(self.cf(schema::CHUNKS), id.as_bytes())?
            .ok_or(StoreError::MissingChunk(*id))?;
        thread_local! {
            // A zstd context is costly to make: one per thread, reused.
            static DECODER: std::cell::RefCell<Option<ChunkDecoder>> = const { std::cell::RefCell::new(None) };
        }
        DECODER.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(ChunkDecoder::new().map_err(|e| StoreError::Corrupt(e.to_string()))?);
            }
            let decoder = slot.as_mut().ok_or_else(|| StoreError::Corrupt("no decoder".into()))?;
            Ok(decoder.decode(id, &stored)?)
        })
    }

    /// The stored form of a chunk (codec header and payload), as served to
    /// peers: they decode and verify it against `id` themselves.
    pub fn get_stored_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(schema::CHUNKS), id.as_bytes())?)
    }

    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self.chunk_meta(id)?.is_some())
    }

    /// Sizes of a stored chunk, without reading it.
    pub(crate) fn chunk_meta(&self, id: &ChunkId) -> Result<Option<ChunkMeta>, StoreError> {
        let cf = self.cf(schema::CHUNK_META);
        if !self.db.key_may_exist_cf(cf, id.as_bytes()) {
            return Ok(None);
        }
        match self.db.get_pinned_cf(cf, id.as_bytes())? {
            None => Ok(None),
            Some(v) => ChunkMeta::decode(&v)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt(format!("chunk {id}: meta entry of {} bytes", v.len()))),
        }
    }

    /// Writes a chunk unless present; returns its sizes if it was new. The
    /// caller must have pinned `id` (transactions do) or hold it referenced.
    pub(crate) fn insert_chunk(&self, id: &ChunkId, stored: &[u8]) -> Result<Option<ChunkMeta>, StoreError> {
        let header = StoredChunkHeader::parse(id, stored)?;
        let _stripe = self.lock_chunk(id);
        if self.has_chunk(id)? {
            return Ok(None);
        }
        let meta = ChunkMeta { len: header.len, stored: stored.len() as u32 };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(schema::CHUNKS), id.as_bytes(), stored);
        batch.put_cf(self.cf(schema::CHUNK_META), id.as_bytes(), meta.encode());
        batch.merge_cf(self.cf(schema::CHUNK_META), schema::STATS_KEY, ChunkTotals::of(meta).encode());
        self.db.write_opt(batch, &chunk_write_options())?;
        Ok(Some(meta))
    }

    /// Makes every chunk written so far durable (chunk writes skip the WAL).
    pub(crate) fn flush_chunks(&self) -> Result<(), StoreError> {
        let cfs = [self.cf(schema::CHUNKS), self.cf(schema::CHUNK_META)];
        self.db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }

    pub(crate) fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    pub(crate) fn has_prefix(&self, cf: &str, prefix: &[u8]) -> Result<bool, StoreError> {
        let mut it = self.db.raw_iterator_cf(self.cf(cf));
        it.seek(prefix);
        if let Some(key) = it.key() {
            return Ok(key.starts_with(prefix));
        }
        it.status()?;
        Ok(false)
    }

    /// Keys in `cf` that start with `prefix`, with the prefix removed.
    pub(crate) fn keys_with_prefix(&self, cf: &str, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(cf));
        it.seek(prefix);
        while let Some(key) = it.key() {
            if !key.starts_with(prefix) {
                break;
            }
            out.push(key[prefix.len()..].to_vec());
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    pub(crate) fn get_message<M: Message + Default>(
        &self,
        cf: &str,
        what: &'static str,
        key: &[u8],
        display: impl ToString,
    ) -> Result<Option<M>, StoreError> {
        match self.db.get_pinned_cf(self.cf(cf), key)? {
            None => Ok(None),
            Some(bytes) => M::decode(&*bytes).map(Some).map_err(|e| StoreError::decode(what, display, e)),
        }
    }
}

/// Chunk writes skip the WAL: a commit flushes the chunk family before it
/// writes the records that reference chunks, and a chunk lost in a crash was
/// garbage anyway.
pub(crate) fn chunk_write_options() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.disable_wal(true);
    opts
}

fn cf_options(name: &str) -> Options {
    let mut opts = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
    if name == schema::CHUNKS {
        // Chunk payloads live in blob files: the LSM tree holds only keys and
        // small blob references, so compaction never rewrites chunk bytes.
        opts.set_enable_blob_files(true);
        opts.set_min_blob_size(512);
        opts.set_blob_file_size(256 << 20);
        opts.set_enable_blob_gc(true);
        opts.set_write_buffer_size(64 << 20);
    }
    if name == schema::CHUNK_META {
        opts.set_merge_operator_associative("strata-chunk-totals", merge_totals);
    }
    opts
}

fn merge_totals(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut total = existing.map(ChunkTotals::decode).unwrap_or_default();
    for op in operands {
        total = total.add(ChunkTotals::decode(op));
    }
    Some(total.encode())
}
