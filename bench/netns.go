package main

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// inNetns runs fn with the calling goroutine's thread in the network
// namespace at path, and moves the thread back afterwards. What fn creates
// on that thread lives in the namespace: sockets it opens, and processes it
// starts (a child inherits the namespaces of the thread that forks it).
func inNetns(path string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return fmt.Errorf("open own network namespace: %w", err)
	}
	defer orig.Close()
	target, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	defer func() {
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// The thread must not go back to the scheduler in the wrong
			// namespace, and the bench cannot go on without it.
			panic(fmt.Sprintf("return to the original network namespace: %v", err))
		}
	}()
	return fn()
}
