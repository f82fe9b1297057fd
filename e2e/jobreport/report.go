// Package jobreport is the report the end-to-end tests' workload
// (e2e/testjob) writes of its own state, shared by the job and the tests.
package jobreport

// Report is what the job says of itself: its pids, its counter in memory
// and in its file, the checksum of its memory, its SysV IPC objects read back.
type Report struct {
	Pid          int      `json:"pid"`
	PPid         int      `json:"ppid"`
	Children     []int    `json:"children"`
	Counter      int64    `json:"counter"`
	CounterFile  int64    `json:"counter_file"`
	MemBytes     int      `json:"mem_bytes"`
	MemSHA       string   `json:"mem_sha"`
	MemSHAAtInit string   `json:"mem_sha_at_init"`
	ShmID        int      `json:"shm_id"`
	ShmData      string   `json:"shm_data"`
	SemID        int      `json:"sem_id"`
	SemValues    []int    `json:"sem_values"`
	MsgID        int      `json:"msg_id"`
	Msgs         []string `json:"msgs"`
	Hostname     string   `json:"hostname"`
	// Sockets is what using the job's TCP listener and UDP socket gave
	// at this report: "ok", or the error (empty without --sockets).
	Sockets string `json:"sockets"`
	TCPPort int    `json:"tcp_port"`
	Reports int    `json:"reports"`
	Time    string `json:"time"`
}
