package criubin

import (
	"context"
	"os/exec"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
)

// NetLock is how CRIU keeps a container's network quiet while it dumps and
// restores it: with an nftables table of its own (through libnftables,
// nothing to install), or with iptables rules (which needs the
// iptables-restore program). CRIU's own default is iptables, even where the
// nftables lock is available, so cr always says which one it wants.
type NetLock string

const (
	NetLockNftables NetLock = "nftables"
	NetLockIptables NetLock = "iptables"
)

// RPC is the lock method in CRIU's RPC options.
func (l NetLock) RPC() *rpc.CriuNetworkLockMethod {
	if l == NetLockNftables {
		return rpc.CriuNetworkLockMethod_NFTABLES.Enum()
	}
	return rpc.CriuNetworkLockMethod_IPTABLES.Enum()
}

// Args is the lock method as CRIU's command line takes it.
func (l NetLock) Args() []string { return []string{"--network-lock", string(l)} }

// ChooseNetLock picks the lock for containers with a network namespace of
// their own: nftables when CRIU and the kernel can lock with it, else
// iptables. needsTool is set when that choice needs iptables-restore and
// it is not on PATH: a checkpoint of such a container would then fail.
func ChooseNetLock(ctx context.Context, criu string) (l NetLock, needsTool bool) {
	if ok, err := probeFeature(ctx, criu, FeatureNftablesLock); err == nil && ok {
		return NetLockNftables, false
	}
	return chooseFallback()
}

func chooseFallback() (NetLock, bool) {
	_, err := exec.LookPath("iptables-restore")
	return NetLockIptables, err != nil
}
