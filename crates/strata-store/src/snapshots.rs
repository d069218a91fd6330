//! The containerd snapshotter's metastore: one [`SnapshotRecord`] per
//! snapshot key in the `snapshots` column family. What the records mean
//! (kinds, parents, labels) is `strata-snapshotter`'s; the store keeps them
//! durable and changes several at once atomically.

use prost::Message;
use rocksdb::WriteBatch;

use crate::{schema, SnapshotRecord, Store, StoreError};

impl Store {
    /// Every snapshot record, by key, in key order.
    ///
    /// Errors: a record that does not decode, a key that is not UTF-8.
    pub fn snapshots(&self) -> Result<Vec<(String, SnapshotRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(schema::SNAPSHOTS), rocksdb::IteratorMode::Start) {
            let (key, value) = item?;
            let key = String::from_utf8(key.to_vec())
                .map_err(|_| StoreError::Corrupt("a snapshot key is not UTF-8".into()))?;
            let record =
                SnapshotRecord::decode(&*value).map_err(|e| StoreError::decode("snapshot", &key, e))?;
            out.push((key, record));
        }
        Ok(out)
    }

    /// Writes `puts` and deletes `deletes` in one synced batch: a commit
    /// (the active key goes, the committed name comes) is never seen half
    /// done, even after a crash.
    pub fn write_snapshots(
        &self,
        puts: &[(&str, &SnapshotRecord)],
        deletes: &[&str],
    ) -> Result<(), StoreError> {
        self.writable()?;
        let cf = self.cf(schema::SNAPSHOTS);
        let mut batch = WriteBatch::default();
        for key in deletes {
            batch.delete_cf(cf, key.as_bytes());
        }
        for (key, record) in puts {
            batch.put_cf(cf, key.as_bytes(), record.encode_to_vec());
        }
        self.write_synced(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OpenMode;

    #[test]
    fn snapshot_records_survive_a_reopen_and_change_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let record = |id| SnapshotRecord { id, kind: 2, ..Default::default() };
        {
            let store = Store::open(dir.path(), OpenMode::ReadWrite).unwrap();
            store.write_snapshots(&[("default/1/a", &record(1)), ("b", &record(2))], &[]).unwrap();
            store.write_snapshots(&[("sha256:c", &record(1))], &["default/1/a"]).unwrap();
        }
        let store = Store::open(dir.path(), OpenMode::ReadWrite).unwrap();
        let all = store.snapshots().unwrap();
        assert_eq!(all, vec![("b".to_owned(), record(2)), ("sha256:c".to_owned(), record(1))]);
    }
}
