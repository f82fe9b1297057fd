package store

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Lock takes the store's exclusive lock, waiting up to wait for other
// holders to release theirs, and fails with ErrLocked (naming the holder
// when it is known) after that, or with ctx's error when ctx ends first.
// In a directory it is flock(2) on DIR/lock, released by the kernel when
// the process dies; in S3 a lock object that expires when its holder stops
// refreshing it (§11). While a Store holds the lock, its own Add, Remove,
// Forget and Prune use it.
func (s *Store) Lock(ctx context.Context, wait time.Duration) (unlock func(), err error) {
	return s.lock(ctx, wait, true)
}

// LockShared takes the store's lock for writing snapshots and removing
// records, which many holders may do at once in S3 (many hosts
// snapshotting into one bucket); only Prune needs the exclusive lock, which
// it takes on top of a shared one when no other holder has any. In a
// directory it is the same as Lock.
func (s *Store) LockShared(ctx context.Context, wait time.Duration) (unlock func(), err error) {
	return s.lock(ctx, wait, false)
}

func (s *Store) lock(ctx context.Context, wait time.Duration, exclusive bool) (func(), error) {
	h, err := s.be.lock(ctx, wait, exclusive)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.held = append(s.held, h)
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if i := slices.Index(s.held, h); i >= 0 {
				s.held = slices.Delete(s.held, i, i+1)
			}
			s.mu.Unlock()
			h.release()
		})
	}, nil
}

// hold returns with the store locked for a mutating call: a no-op when this
// Store already holds a lock that is enough (an exclusive one, for
// exclusive), an upgrade of a shared one to exclusive, and otherwise a lock
// that does not wait.
func (s *Store) hold(ctx context.Context, exclusive bool) (func(), error) {
	s.mu.Lock()
	var have heldLock
	for _, h := range s.held {
		if have == nil || h.exclusive() {
			have = h
		}
	}
	s.mu.Unlock()
	if have == nil {
		return s.lock(ctx, 0, exclusive)
	}
	if exclusive && !have.exclusive() {
		if err := have.upgrade(ctx); err != nil {
			return nil, err
		}
		return func() {}, nil
	}
	return func() {}, nil
}

// lockValid fails when a lock this Store holds has been lost (an S3 lock
// not refreshed in time), so that a writer stops before its record.
func (s *Store) lockValid() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.held {
		if err := h.valid(); err != nil {
			return fmt.Errorf("lock store %s: %w", s.be, err)
		}
	}
	return nil
}
