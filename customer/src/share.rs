//! Deleting one of our shares: its key's registration on every supplier, so
//! that members are refused from then on, then every version of every file
//! in it. See `docs/design/sharing.md`.

use std::collections::BTreeSet;

use common::crypto::Purpose;
use common::envelope::Envelope;
use common::manifest::ObjectId;
use prost::Message;
use proto::storage::v1::{KeyRemoval, RemoveKeyRequest};

use crate::session::{CALL_TIMEOUT, LocationKeys, Session, SessionError};
use crate::transfer::{TransferError, list_manifests, location_proto};

/// What [`Session::delete_share`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareDeleted {
    /// Files deleted, with all their versions.
    pub files: usize,
    /// Suppliers that hold neither the files nor the key any more.
    pub suppliers: usize,
}

impl Session {
    /// Every object any of our suppliers lists in the location of `keys`.
    /// A manifest whose signatures do not check is counted too: deleting in
    /// our own location can only remove what we mean to remove, and a file
    /// left behind would take quota nobody could free.
    async fn listed_objects(&self, keys: &LocationKeys) -> Result<BTreeSet<ObjectId>, String> {
        let mut objects = BTreeSet::new();
        for position in 0..self
            .own_suppliers()
            .map_err(|e| e.to_string())?
            .suppliers
            .len() as u32
        {
            let client = self.client(position).await.map_err(|e| e.to_string())?;
            let addr = self.supplier_addr(position);
            let manifests = list_manifests(client, location_proto(keys), None, position, &addr)
                .await
                .map_err(|e| e.to_string())?;
            for wire in manifests {
                let object = proto::storage::v1::Manifest::decode(wire.body.as_slice())
                    .ok()
                    .and_then(|body| ObjectId::from_slice(&body.object_id).ok())
                    .ok_or_else(|| {
                        format!("supplier at position {position} lists a manifest without a readable object ID")
                    })?;
                objects.insert(object);
            }
        }
        Ok(objects)
    }

    /// Deletes the share of `keys`, one of ours: first the registration of
    /// its key on every supplier, so that members are refused from then on,
    /// then every version of every file in it.
    ///
    /// A failure leaves what was done done, and running this again finishes
    /// the job; no file is deleted until every supplier dropped the key and
    /// listed the share, and it succeeds only once none lists anything. The
    /// key stays in the keystore; the caller drops it once this succeeded.
    pub async fn delete_share(&self, keys: &LocationKeys) -> Result<ShareDeleted, TransferError> {
        let share = keys.key_id.to_string();
        if keys.key_id.is_master() {
            return Err(SessionError::Key(
                "the master location is not a share; remove its files with `silt rm`".into(),
            )
            .into());
        }
        if keys.key_id.owner() != self.user() {
            return Err(TransferError::NotOwner(share));
        }
        let count = self.own_suppliers()?.suppliers.len() as u32;
        let not_deleted = |reason: String| TransferError::ShareNotDeleted {
            share: share.clone(),
            reason,
        };

        // The key goes first: from then on members are refused, so none
        // can add a file that the listing below would miss.
        let removal = KeyRemoval {
            key_id: share.clone(),
            epoch: keys.epoch,
            issued_unix: common::unix_now(),
        };
        let removal = Envelope::seal_message(self.master(), Purpose::KeyRemove, &removal)
            .map_err(|e| SessionError::Key(e.to_string()))?;
        // A key not there was removed by an earlier run.
        let (_, failures) = self
            .on_every_position(async |mut client| {
                let mut request = tonic::Request::new(RemoveKeyRequest {
                    removal: Some(removal.to_proto()),
                });
                request.set_timeout(CALL_TIMEOUT);
                client.remove_key(request).await.map(drop)
            })
            .await?;
        if !failures.is_empty() {
            return Err(not_deleted(format!(
                "its key is still registered where these failed, and no file was deleted: {}",
                failures.join("; ")
            )));
        }

        // The owner lists and deletes without the registration.
        let files = self
            .listed_objects(keys)
            .await
            .map_err(|e| not_deleted(format!("no file was deleted: {e}")))?;
        for (done, file) in files.iter().enumerate() {
            let (_, failed) = self.delete_object(keys, *file, None).await?;
            if !failed.is_empty() {
                return Err(not_deleted(format!(
                    "{done} of its {} files were deleted, then: {}",
                    files.len(),
                    failed.join("; ")
                )));
            }
        }
        let left = self
            .listed_objects(keys)
            .await
            .map_err(|e| not_deleted(format!("its files were deleted, then: {e}")))?;
        if !left.is_empty() {
            return Err(not_deleted(format!(
                "{} files are still listed after deleting {}",
                left.len(),
                files.len()
            )));
        }
        Ok(ShareDeleted {
            files: files.len(),
            suppliers: count as usize,
        })
    }
}
