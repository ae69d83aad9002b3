# qboot-reconcile.path starts qbootctl reconcile while this exists
