import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "items_in_events.py"


def test_keeps_the_items_clicked_in_the_first_n_events(tmp_path: Path):
    events, items, out = tmp_path / "events.csv", tmp_path / "items.csv", tmp_path / "out.csv"
    events.write_text("ts,user_id,item_id,event_type,session_id\n1,u,a,click,\n2,u,b,click,\n3,u,c,click,\n")
    items.write_text("item_id,title,category,price\na,A,x,\nb,B,x,1.5\nc,C,y,\nd,D,y,\n")
    subprocess.run([sys.executable, str(SCRIPT), str(events), str(items), "2", str(out)], check=True)
    assert out.read_text().splitlines() == ["item_id,title,category,price", "a,A,x,", "b,B,x,1.5"]
