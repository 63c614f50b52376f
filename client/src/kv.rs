//! Typed operations on the replicated key-value store.

use bytes::Bytes;
use pbft_core::app::{KvOp, KvResult};

use crate::client::Client;
use crate::error::ClientError;

/// The outcome of [`Client::cas`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The key held the expected value and now holds the new one.
    Swapped,
    /// The key held something else (`None`: it was absent); nothing changed.
    Mismatch(Option<Bytes>),
}

impl Client {
    /// Sets `key` to `value`.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let op = KvOp::Put {
            key: key.into(),
            value: value.into(),
        };
        match self.kv(op).await? {
            KvResult::Done => Ok(()),
            other => Err(unexpected("put", &other)),
        }
    }

    /// The value of `key`, or `None` if it is absent: a read-only request answered by 2f+1
    /// replicas without ordering, ordered if they do not agree (linearizable either way).
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Bytes>, ClientError> {
        self.get_with(key, false).await
    }

    /// [`Client::get`] through the ordered path only, like a write.
    pub async fn get_ordered(&self, key: impl Into<Vec<u8>>) -> Result<Option<Bytes>, ClientError> {
        self.get_with(key, true).await
    }

    async fn get_with(
        &self,
        key: impl Into<Vec<u8>>,
        ordered: bool,
    ) -> Result<Option<Bytes>, ClientError> {
        let op = KvOp::Get { key: key.into() }.encode();
        let bytes = if ordered {
            self.submit(op).await?
        } else {
            self.submit_read(op).await?
        };
        match decode(&bytes)? {
            KvResult::Value(value) => Ok(value.map(Bytes::from)),
            other => Err(unexpected("get", &other)),
        }
    }

    /// Removes `key`; returns the value it had, or `None` if it was absent.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<Option<Bytes>, ClientError> {
        match self.kv(KvOp::Delete { key: key.into() }).await? {
            KvResult::Value(value) => Ok(value.map(Bytes::from)),
            other => Err(unexpected("delete", &other)),
        }
    }

    /// Sets `key` to `new` if its value is `expected` (`None`: the key is absent).
    pub async fn cas(
        &self,
        key: impl Into<Vec<u8>>,
        expected: Option<Vec<u8>>,
        new: impl Into<Vec<u8>>,
    ) -> Result<CasOutcome, ClientError> {
        let op = KvOp::Cas {
            key: key.into(),
            expected,
            new: new.into(),
        };
        match self.kv(op).await? {
            KvResult::Done => Ok(CasOutcome::Swapped),
            KvResult::CasFailed(current) => Ok(CasOutcome::Mismatch(current.map(Bytes::from))),
            other => Err(unexpected("cas", &other)),
        }
    }

    async fn kv(&self, op: KvOp) -> Result<KvResult, ClientError> {
        decode(&self.submit(op.encode()).await?)
    }
}

fn decode(bytes: &[u8]) -> Result<KvResult, ClientError> {
    match KvResult::decode(bytes) {
        Ok(KvResult::Invalid) => Err(ClientError::Rejected(
            "the replicas could not decode the operation".into(),
        )),
        Ok(result) => Ok(result),
        Err(e) => Err(ClientError::Rejected(format!(
            "the agreed result is not a key-value result: {e}"
        ))),
    }
}

fn unexpected(op: &str, result: &KvResult) -> ClientError {
    ClientError::Rejected(format!("unexpected result for {op}: {result:?}"))
}
