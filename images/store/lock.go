package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// lockPoll is how often a waiting Lock tries again.
const lockPoll = 50 * time.Millisecond

// Lock takes the store's exclusive lock (flock(2) on DIR/lock), waiting up
// to wait for another holder to release it, and fails with ErrLocked (naming
// the holder's pid when it is known) after that, or with ctx's error when ctx
// ends first. The lock is released by calling unlock, or by the kernel when
// the process dies, so a killed cron run never leaves the store locked.
// While a Store holds the lock, its own Add, Remove, Forget and Prune use it.
func (s *Store) Lock(ctx context.Context, wait time.Duration) (unlock func(), err error) {
	f, err := os.OpenFile(s.path(lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock store: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock store: flock %s: %w", f.Name(), err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			holder := readHolder(f)
			f.Close()
			if holder != "" {
				return nil, fmt.Errorf("lock store %s: %w by pid %s", s.dir, ErrLocked, holder)
			}
			return nil, fmt.Errorf("lock store %s: %w", s.dir, ErrLocked)
		}
		t := time.NewTimer(min(left, lockPoll))
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("lock store: %w", ctx.Err())
		case <-t.C:
		}
	}
	// The pid is only a hint for the ErrLocked message of the next waiter.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	s.mu.Lock()
	s.locks++
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.locks--
			s.mu.Unlock()
			f.Close() // closing the last descriptor releases the flock
		})
	}, nil
}

func readHolder(f *os.File) string {
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	pid := strings.TrimSpace(string(b[:n]))
	if _, err := strconv.Atoi(pid); err != nil {
		return ""
	}
	return pid
}

// hold returns with the store locked for a mutating call: a no-op when this
// Store already holds the lock, otherwise a Lock that does not wait.
func (s *Store) hold(ctx context.Context) (func(), error) {
	s.mu.Lock()
	held := s.locks > 0
	s.mu.Unlock()
	if held {
		return func() {}, nil
	}
	return s.Lock(ctx, 0)
}
