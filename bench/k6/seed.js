// The course practical's k6 scenario: ramping virtual users listing todos,
// checking "status was 200". Scaled by environment variables so it fits a
// 2-core machine and a big one:
//   k6 run -e TARGET=http://127.0.0.1:8080 -e VUS=200 -e RAMP=20s bench/k6/seed.js
import http from 'k6/http';
import { check, sleep } from 'k6';

const TARGET = __ENV.TARGET || 'http://127.0.0.1:8080';
const VUS = parseInt(__ENV.VUS || '100');
const RAMP = __ENV.RAMP || '20s';

export const options = {
  stages: [
    { duration: RAMP, target: VUS },
    { duration: RAMP, target: VUS * 2 },
    { duration: RAMP, target: 0 },
  ],
};

export default function () {
  const res = http.get(`${TARGET}/api/v1/todos`);
  check(res, { 'status was 200': (r) => r.status == 200 });
  sleep(1);
}
